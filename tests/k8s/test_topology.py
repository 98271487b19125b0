"""The dev overlay's pods, run on this machine as a node runs them: one network namespace per pod on a bridge,
the node's Consul agent on the bridge's host IP (the meshlet dev agent stands in for the client agent), each
pod's containers started from the rendered manifests in the kubelet's order (a native sidecar first, the app once
the sidecar's startup probe passes) with the environment the manifests give them and the meshlet.yaml of the
rendered ConfigMaps. Only addresses change: the pod and host IPs come from this bridge, Jaeger is a receiver on
the host IP, and files mounted in a pod live in the test's folder. Then the manifests' own probes run against the
pod IPs, as the kubelet would; a checkout crosses every pod over mTLS from the agent's Connect CA, in one trace;
and docs/kubernetes.md's breaker walk-through plays out: a second inventory pod, a faults file that breaks the
first, orders ejecting it while the checkouts go on. And the kubelet's restart of an app container after a failed
liveness probe (preStop hook, SIGTERM, the container again) brings its instance back into rotation. And prod's two
replicas of orders and of inventory, on one Redis (SHOP_STORE), act as one: stock, reservations and orders read
alike whichever replica answers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from meshlet.config import load_config
from meshlet.mesh import Mesh
from meshlet_shop_api.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from meshlet_shop_api.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from meshlet_shop_api.orders.v1 import orders_pb2, orders_pb2_grpc
from tests.k8s import netns
from tests.k8s.manifests import Obj, Workload, pod_env, probe_port, render, workload
from tests.support.agents import Agent
from tests.support.otlp_receiver import Receiver
from tests.support.processes import REPO_ROOT, Child, Processes, eventually, http_answers, meshlet_argv, wait_until
from tests.support.redis_server import RedisServer, start_redis

pytestmark = pytest.mark.slow

SHOP = ("gateway", "orders", "inventory", "payments")  # callers first: nothing waits for its upstreams to exist
START_S = 60.0  # bounds on waiting for processes to come up, never timing assertions
AGENT_PORT = 8500  # the manifests' CONSUL_HTTP_ADDR: http://$(HOST_IP):8500
OTLP_PORT = 4317
MESH_PORT = 15006


@pytest.fixture
def network() -> Iterator[netns.PodNetwork]:
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(f"pod topology in network namespaces: {reason}")
    pods = netns.PodNetwork.create()
    try:
        yield pods
    finally:
        pods.close()


@pytest.fixture
async def jaeger(network: netns.PodNetwork) -> AsyncIterator[Receiver]:
    """What the manifests' http://jaeger:4317 reaches: an OTLP receiver, here on the node's address."""
    receiver = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    receiver.port = server.add_insecure_port(f"{network.host_ip}:{OTLP_PORT}")
    await server.start()
    try:
        yield receiver
    finally:
        await server.stop(None)


@pytest.fixture
async def pod_procs(network: netns.PodNetwork, jaeger: Receiver, tmp_path: Path) -> AsyncIterator[Processes]:
    """The pods' processes; stopped before `network` removes their namespaces and before `jaeger` stops, all
    signalled at once as a node shutting down, then reaped while the receiver still takes their last spans."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        for child in procs.children:
            child.signal(signal.SIGTERM)
        await asyncio.to_thread(procs.close)


def start_node_agent(procs: Processes, network: netns.PodNetwork) -> Agent:
    address = f"{network.host_ip}:{AGENT_PORT}"
    child = procs.start(meshlet_argv("dev-agent", "--http-addr", address, "--node", "node-1"), name="node-agent")
    agent = Agent("meshlet", network.host_ip, AGENT_PORT, child)
    try:
        wait_until(lambda: http_answers(f"{agent.url}/v1/status/leader"), START_S, "the node's agent")
    except AssertionError:
        raise AssertionError(f"the node agent did not start:\n{child.output()}") from None
    return agent


# ---------------------------------------------------------------- a kubelet, reduced to what these pods use


class PodRunner:
    """Starts one pod's containers from its rendered spec, inside its namespace."""

    def __init__(
        self,
        procs: Processes,
        w: Workload,
        pod: netns.Pod,
        host_ip: str,
        folder: Path,
        patched_env: dict[str, str] | None = None,
    ) -> None:
        """`pod` names the instance (two pods of one workload get two names, as a ReplicaSet's do);
        `patched_env` is what an overlay's patch adds to the app container's environment."""
        self.procs, self.workload, self.pod, self.folder = procs, w, pod, folder
        self.patched_env = patched_env or {}
        self.jaeger = f"http://{host_ip}:{OTLP_PORT}"
        self.fields = {
            "status.podIP": pod.ip,
            "status.hostIP": host_ip,
            "metadata.name": pod.name,
            "metadata.namespace": "meshlet",
            "spec.nodeName": "node-1",
        }
        self.mounts = self._materialise_volumes()
        self.running: dict[str, Child] = {}  # by container name

    def _materialise_volumes(self) -> dict[str, Path]:
        """Each mounted volume as a folder: ConfigMaps written out, emptyDirs empty."""
        objects = render("dev")
        config_maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
        folders: dict[str, Path] = {}
        for volume in self.workload.pod.get("volumes", []):
            folder = self.folder / self.pod.name / volume["name"]
            folder.mkdir(parents=True)
            if "configMap" in volume:
                for key, text in config_maps[volume["configMap"]["name"]]["data"].items():
                    (folder / key).write_text(text)
            folders[volume["name"]] = folder
        mounts: dict[str, Path] = {}
        for container in self.workload.containers():
            for mount in container.get("volumeMounts", []):
                mounts[mount["mountPath"]] = folders[mount["name"]]
        return mounts

    def _local(self, value: str) -> str:
        """A path inside the pod, as the path of the folder that stands in for its volume."""
        for mount_path, folder in self.mounts.items():
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(folder) + value[len(mount_path) :]
        return value

    def environment(self, container: Obj) -> dict[str, str]:
        env = {key: self._local(value) for key, value in pod_env(container, self.fields).items()}
        if "OTEL_EXPORTER_OTLP_ENDPOINT" in env:  # http://jaeger:4317: the Service's address, here the node's
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.jaeger
            env["OTEL_BSP_SCHEDULE_DELAY"] = "200"  # export within the test's patience, not every 5 s
        if container["name"] == self.workload.name:
            env.update(self.patched_env)
        return env

    def command(self, words: list[str]) -> list[str]:
        command = [self._local(word) for word in words]
        if command[0] == "python":
            command[0] = sys.executable
        elif command[0] == "meshlet-sidecar":
            command[:1] = [sys.executable, "-m", "meshlet_sidecar"]
        return command

    def start(self, container: Obj) -> None:
        name = f"{self.pod.name}-{container['name']}"
        argv = self.pod.argv(self.command(container["command"]))
        self.running[container["name"]] = self.procs.start(argv, name=name, env=self.environment(container))

    async def exec(self, container: Obj, argv: list[str], stdin: str) -> tuple[int, str]:
        """``kubectl exec -i POD -c CONTAINER -- ARGV < stdin``: its exit code and output."""
        env_words = [word for word in argv[1:] if "=" in word] if argv[0] == "env" else []
        command = self.command(argv[1 + len(env_words) :] if env_words else argv)
        env = {**os.environ, **self.environment(container), **dict(w.split("=", 1) for w in env_words)}
        process = await asyncio.create_subprocess_exec(
            *self.pod.argv(command),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        output, _ = await asyncio.wait_for(process.communicate(stdin.encode()), START_S)
        return await process.wait(), output.decode()

    def probe(self, container: Obj, kind: str) -> bool:
        """Run `container`'s probe of `kind` against the pod IP, from the node, as the kubelet does."""
        probe = container[kind]
        port = probe_port(probe)
        if isinstance(port, str):
            port = next(p["containerPort"] for p in container["ports"] if p.get("name") == port)
        if "httpGet" in probe:
            url = f"http://{self.pod.ip}:{port}{probe['httpGet']['path']}"
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return 200 <= int(response.status) < 400
            except (urllib.error.URLError, OSError):
                return False
        if "tcpSocket" in probe:
            try:
                socket.create_connection((self.pod.ip, port), timeout=2).close()
            except OSError:
                return False
            return True
        with grpc.insecure_channel(f"{self.pod.ip}:{port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def wait(self, container: Obj, kind: str) -> None:
        what = f"{self.pod.name}/{container['name']} {kind}"
        try:
            await eventually(lambda: self.probe(container, kind), what, START_S)
        except AssertionError:
            logs = "\n".join(child.output()[-3000:] for child in self.procs.children)
            raise AssertionError(f"{what} never passed; logs:\n{logs}") from None

    async def run(self) -> None:
        """Native sidecars first, each gating the next container on its startup probe; then the apps."""
        for container in self.workload.pod.get("initContainers", []):
            assert container.get("restartPolicy") == "Always", "only native sidecars are modelled"
            self.start(container)
            if "startupProbe" in container:
                await self.wait(container, "startupProbe")
        for container in self.workload.pod["containers"]:
            self.start(container)

    async def wait_ready(self) -> None:
        for container in self.workload.containers():
            if "readinessProbe" in container:
                await self.wait(container, "readinessProbe")


# ---------------------------------------------------------------- the test


async def checkout_until_the_mesh_has_converged(
    stub: gateway_pb2_grpc.GatewayStub, request: gateway_pb2.CheckoutRequest
) -> gateway_pb2.CheckoutReply:
    """Checkout, repeated with the same request_id (safe: it is the idempotency key) while an upstream's
    watchers have not yet seen a pod that only just turned passing, as a client of a fresh rollout would."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + START_S
    while True:
        try:
            reply: gateway_pb2.CheckoutReply = await stub.Checkout(request, timeout=15)
            return reply
        except grpc.aio.AioRpcError as error:
            if loop.time() > give_up or "no healthy instance" not in (error.details() or ""):
                raise
        await asyncio.sleep(0.5)


def docs_checkout_command() -> tuple[list[str], str]:
    """The ``kubectl exec`` command and script of docs/kubernetes.md's checkout loop, cut to two orders."""
    text = (REPO_ROOT / "docs" / "kubernetes.md").read_text()
    found = re.search(r"kubectl -n meshlet exec -i deploy/gateway -- (.*?) <<'EOF'\n(.*?)\nEOF\n", text, re.DOTALL)
    assert found, "docs/kubernetes.md no longer has the checkout loop this test runs"
    script = found.group(2).replace("range(200)", "range(2)").replace("asyncio.sleep(0.2)", "asyncio.sleep(0)")
    return found.group(1).split(), script


def registered_at(agent: Agent, service: str, pod: netns.Pod) -> Callable[[], bool]:
    """Whether Consul lists `service` passing at `pod`'s IP and the mesh port: what callers follow."""
    return lambda: any(
        (e["Service"]["Address"], e["Service"]["Port"]) == (pod.ip, MESH_PORT) for e in agent.passing(service)
    )


async def start_pod(
    procs: Processes,
    network: netns.PodNetwork,
    agent: Agent,
    service: str,
    pod_name: str,
    folder: Path,
    patched_env: dict[str, str] | None = None,
) -> PodRunner:
    pod = network.add_pod(pod_name)
    runner = PodRunner(procs, workload(render("dev"), service), pod, network.host_ip, folder, patched_env)
    await runner.run()
    await runner.wait_ready()
    try:
        await eventually(registered_at(agent, service, runner.pod), f"{pod_name} passing in Consul", START_S)
    except AssertionError:
        raise AssertionError(f"Consul has {agent.get('/v1/agent/services')}") from None
    instance_id = f"{service}-{runner.pod.ip}-{MESH_PORT}"  # what the preStop hook (drain_hook.py) names
    assert instance_id in agent.get("/v1/agent/services")
    return runner


def orders_metrics(orders: PodRunner) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """orders' Prometheus samples, from its metrics port on the pod IP, as a scraper sees them."""
    try:
        with urllib.request.urlopen(f"http://{orders.pod.ip}:9464/metrics", timeout=2) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


async def test_the_dev_overlay_as_pods_a_checkout_across_them_and_a_breaker_that_trips(
    network: netns.PodNetwork, pod_procs: Processes, jaeger: Receiver, tmp_path: Path
) -> None:
    agent = start_node_agent(pod_procs, network)
    pods = {name: await start_pod(pod_procs, network, agent, name, name, tmp_path) for name in SHOP}

    # A caller on the node with its own Connect certificate: gateway -> orders -> inventory, payments.
    config = load_config(
        None,
        env={},
        overrides={"service.name": "checkout-client", "consul.address": agent.url, "tls.source": "consul"},
    )
    async with Mesh(config) as mesh:
        stub = gateway_pb2_grpc.GatewayStub(mesh.channel("gateway"))
        first = gateway_pb2.CheckoutRequest(request_id="k8s-topology-1", customer_id="c1", sku="sku-tea", quantity=2)
        reply = await checkout_until_the_mesh_has_converged(stub, first)
        assert reply.order_id
        assert reply.charge_id

        # Its spans reach "Jaeger" from all four pods, in one trace.
        def services_in_one_trace() -> set[str]:
            by_trace: dict[str, set[str]] = {}
            for span in jaeger.spans:
                by_trace.setdefault(span.trace_id, set()).add(span.service)
            return max(by_trace.values(), key=len, default=set())

        try:
            await eventually(lambda: set(SHOP) <= services_in_one_trace(), "one trace across the four pods", START_S)
        except AssertionError:
            raise AssertionError(f"services in the widest trace: {services_in_one_trace()}") from None

        # docs/kubernetes.md's way to place orders works as written (with 2 orders instead of 200).
        argv, script = docs_checkout_command()
        code, output = await pods["gateway"].exec(pods["gateway"].workload.container("gateway"), argv, script)
        assert code == 0, output
        assert output.count("order_id") == 2, output

        # docs/kubernetes.md's breaker walk-through: a second inventory pod, then the first one's faults file
        # (its emptyDir) makes every call fail. orders ejects it and the checkouts go on.
        await start_pod(pod_procs, network, agent, "inventory", "inventory-b", tmp_path)
        orders = pods["orders"]
        await eventually(
            lambda: sample(orders_metrics(orders), "meshlet_endpoints", service="inventory", state="healthy") == 2,
            "orders to see both inventory pods",
            START_S,
        )
        faulty = pods["inventory"]
        faults = faulty.mounts["/var/run/shop"] / "faults.json"
        faults.write_text(json.dumps({"error_rate": 1.0, "error_code": "UNAVAILABLE"}))
        endpoint = f"{faulty.pod.ip}:{MESH_PORT}"
        for n in range(40):
            request = gateway_pb2.CheckoutRequest(
                request_id=f"breaker-{n}", customer_id="c1", sku="sku-tea", quantity=1
            )
            reply = await stub.Checkout(request, timeout=15)
            assert reply.order_id, n
            if sample(orders_metrics(orders), "meshlet_breaker_state", service="inventory", endpoint=endpoint) == 2:
                break
        metrics = orders_metrics(orders)
        assert sample(metrics, "meshlet_breaker_state", service="inventory", endpoint=endpoint) == 2, metrics
        assert sample(metrics, "meshlet_endpoints", service="inventory", state="ejected") == 1

        # What the walk-through says to look at besides the metrics: the faulty pod stays ready (only its calls
        # fail), and orders' spans show the retries and the breaker opening.
        sidecar = faulty.workload.container("meshlet-sidecar")
        assert faulty.probe(sidecar, "readinessProbe")

        def orders_events() -> set[str]:
            return {event for span in jaeger.spans if span.service == "orders" for event in span.events}

        try:
            await eventually(
                lambda: {"retry.scheduled", "breaker.opened"} <= orders_events(), "orders' span events", START_S
            )
        except AssertionError:
            raise AssertionError(f"orders' span events: {orders_events()}") from None


async def test_an_app_restarted_after_a_failed_liveness_probe_comes_back_into_rotation(
    network: netns.PodNetwork, pod_procs: Processes, jaeger: Receiver, tmp_path: Path
) -> None:
    """The kubelet restarts a container whose liveness probe fails as it stops one: preStop hook, SIGTERM, then
    the container again, beside the sidecar that keeps running. The instance leaves the passing set at the hook,
    the sidecar's /ready with it, and both come back once the restarted app is healthy."""
    agent = start_node_agent(pod_procs, network)
    inventory = await start_pod(pod_procs, network, agent, "inventory", "inventory", tmp_path)
    app = inventory.workload.container("inventory")
    sidecar = inventory.workload.container("meshlet-sidecar")
    in_rotation = registered_at(agent, "inventory", inventory.pod)
    # The plain app listens on loopback: its port is out of reach from the node, and the kubelet's liveness
    # probe reaches its health through the sidecar.
    app_port = int(pod_env(app)["SHOP_PORT"])
    with pytest.raises(OSError):
        socket.create_connection((inventory.pod.ip, app_port), timeout=2).close()
    assert inventory.probe(app, "livenessProbe")

    hook = ["env", "DRAIN_NOTICE_S=0", *app["lifecycle"]["preStop"]["exec"]["command"]]
    code, output = await inventory.exec(app, hook, "")
    assert code == 0, output
    assert not in_rotation(), "callers still pick the instance after the preStop hook"
    assert not inventory.probe(sidecar, "readinessProbe"), "the pod shows Ready while out of rotation"

    stopped = inventory.running["inventory"]
    stopped.signal(signal.SIGTERM)
    await asyncio.to_thread(stopped.wait, START_S)
    assert not in_rotation()
    await eventually(lambda: not inventory.probe(app, "livenessProbe"), "the stopped app's liveness to fail", START_S)

    inventory.start(app)  # the kubelet starts the container again
    try:
        await eventually(in_rotation, "the restarted app's instance back in the passing set", START_S)
    except AssertionError:
        logs = "\n".join(child.output()[-3000:] for child in pod_procs.children)
        raise AssertionError(f"Consul has {agent.get('/v1/health/service/inventory')}; logs:\n{logs}") from None
    await inventory.wait(sidecar, "readinessProbe")
    await inventory.wait(app, "livenessProbe")


def prod_store_env(service: str, redis: RedisServer) -> dict[str, str]:
    """What prod's shared-store.yaml adds to `service`'s app container, its Redis Service's address (checked
    against the Service by test_cross_refs) swapped for the stand-in's, as Jaeger's is."""
    url = urllib.parse.urlsplit(pod_env(workload(render("prod"), service).container(service))["SHOP_STORE"])
    assert (url.hostname, url.port) == ("redis", 6379), url
    return {"SHOP_STORE": url._replace(netloc=f"{redis.host}:{redis.port}").geturl()}


def served(pod: PodRunner, method: str) -> float:
    """How many calls of `method` the SDK pod `pod` answered OK, from its metrics port as a scraper sees them."""
    return sum(
        value
        for (name, labels), value in orders_metrics(pod).items()
        if name == "meshlet_requests_total"
        and dict(labels).get("direction") == "inbound"
        and dict(labels).get("method", "").endswith(method)
        and dict(labels).get("code") == "OK"
    )


async def test_prod_replicas_of_orders_and_inventory_share_their_state(
    network: netns.PodNetwork, pod_procs: Processes, jaeger: Receiver, tmp_path: Path
) -> None:
    """prod runs two replicas each of orders and inventory on one Redis (SHOP_STORE, shared-store.yaml): here two
    pods of each with that variable, a redis-server on the node's address standing in for the ``redis`` Service.
    Callers take turns between the replicas (round_robin), so each read lands on the other replica than the write
    before it: the stock is one (its last units are not sold twice), a reservation is released once, an order
    made on one replica is found on the other, and ListOrders' pages go on across them."""
    agent = start_node_agent(pod_procs, network)
    redis = start_redis(pod_procs, network.host_ip)
    await start_pod(pod_procs, network, agent, "payments", "payments", tmp_path)
    inventory_env, orders_env = prod_store_env("inventory", redis), prod_store_env("orders", redis)
    for name in ("inventory-a", "inventory-b"):
        await start_pod(pod_procs, network, agent, "inventory", name, tmp_path, inventory_env)
    orders = [
        await start_pod(pod_procs, network, agent, "orders", name, tmp_path, orders_env)
        for name in ("orders-a", "orders-b")
    ]

    def caller(identity: str, upstream: str) -> Mesh:
        overrides = {
            "service.name": identity,  # the one peer each service's authz admits
            "consul.address": agent.url,
            "tls.source": "consul",
            f"upstreams.{upstream}.balancer": "round_robin",
        }
        return Mesh(load_config(None, env={}, overrides=overrides))

    async with caller("orders", "inventory") as as_orders, caller("gateway", "orders") as as_gateway:
        inventory = inventory_pb2_grpc.InventoryStub(as_orders.channel("inventory"))

        # The last teapots, reserved at once half on each replica: sold once.
        stock = await inventory.GetStock(inventory_pb2.GetStockRequest(sku="sku-teapot"), timeout=15)

        async def reserve_one(n: int) -> str:
            request = inventory_pb2.ReserveRequest(reservation_id=f"teapot-{n}", sku="sku-teapot", quantity=1)
            try:
                return str((await inventory.Reserve(request, timeout=15)).served_by)
            except grpc.aio.AioRpcError as error:
                return str(error.code().name)

        outcomes = await asyncio.gather(*(reserve_one(n) for n in range(2 * stock.available)))
        assert outcomes.count("FAILED_PRECONDITION") == stock.available, outcomes
        assert outcomes.count("inventory-a") + outcomes.count("inventory-b") == stock.available, outcomes

        # One reservation, released on both replicas: its units come back once.
        reserve = inventory_pb2.ReserveRequest(reservation_id="kettle-1", sku="sku-kettle", quantity=2)
        made = await inventory.Reserve(reserve, timeout=15)
        release = inventory_pb2.ReleaseRequest(reservation_id="kettle-1")
        releases = [await inventory.Release(release, timeout=15) for _ in range(2)]
        assert {reply.served_by for reply in releases} == {"inventory-a", "inventory-b"}
        assert [reply.released for reply in releases] == [True, False], releases
        assert made.reservation_id == "kettle-1"

        # Orders made on either replica, read and paged through on the other.
        orders_stub = orders_pb2_grpc.OrdersStub(as_gateway.channel("orders"))
        created = []
        for n in range(4):
            request = orders_pb2.CreateOrderRequest(
                request_id=f"shared-{n}", customer_id="c-shared", items=[orders_pb2.LineItem(sku="sku-tea", quantity=1)]
            )
            created.append(await orders_stub.CreateOrder(request, timeout=15))
        for order in created:
            for _ in range(2):
                found = await orders_stub.GetOrder(orders_pb2.GetOrderRequest(order_id=order.order_id), timeout=15)
                assert found == order
        assert all(served(pod, "GetOrder") > 0 for pod in orders), "both orders replicas answered GetOrder"
        paged, token = [], ""
        for _ in created:
            page = await orders_stub.ListOrders(
                orders_pb2.ListOrdersRequest(filter="customer_id=c-shared", page_size=1, page_token=token), timeout=15
            )
            paged += [order.order_id for order in page.orders]
            token = page.next_page_token
        assert paged == [order.order_id for order in created]
        assert not token
