"""Checks across objects that no schema can make: what one object names, another must define."""

from __future__ import annotations

import re
import tomllib
import urllib.parse
from pathlib import Path

import pytest

from meshlet.config import load_config, split_host_port
from meshlet.discovery.registration import REQUEST_TIMEOUT_S as DEREGISTER_TIMEOUT_S
from meshlet.telemetry.tracing import SHUTDOWN_S as SPAN_FLUSH_S
from meshlet_shop.shared_store import store_url
from tests.k8s.manifests import (
    FAKE_FIELDS,
    MESHLET_IMAGE,
    OVERLAYS,
    MeshletPod,
    Obj,
    config_path,
    edge_pod,
    has_port,
    meshlet_pods,
    named,
    pod_env,
    probe_port,
    probes,
    render,
    render_extra,
    workload,
    workloads,
)
from tests.support.processes import REPO_ROOT

SHOP = ("gateway", "orders", "inventory", "payments")
SIDECAR_MODE = ("inventory", "payments")
MESH_PORT = 15006
EVERY_ADDRESS = "::"  # both IP families, 127.0.0.1 included: IPv4-only, dual-stack and IPv6 clusters alike
PRESTOP_NOTICE_S = 3  # k8s/base/shop/drain_hook.py's default wait
SHUTDOWN_MARGIN_S = 5  # kept free after an SDK pod's worst-case shutdown
STORE_URL = "redis://redis:6379/0"  # prod's orders and inventory: their shared state
OPERATOR_SECRETS = ("consul-acl-bootstrap",)  # prod's Consul bootstrap token: made by hand, never in git


def project_version() -> str:
    version: str = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_probe_names_a_port_of_its_own_container(overlay: str) -> None:
    """...or, for an app beside a native sidecar, the sidecar's (the app listens on loopback, out of the kubelet's
    reach: test_native_sidecars_and_their_probes)."""
    for w in workloads(render(overlay)):
        sidecars = [c for c in w.pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
        for container in w.containers():
            for kind, probe in probes(container):
                if "exec" in probe:
                    continue
                port = probe_port(probe)
                owners = [container, *sidecars] if container in w.pod["containers"] else [container]
                assert any(has_port(c, port) for c in owners), f"{w.name}/{container['name']} {kind} port {port}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_service_targets_a_native_sidecars_port_by_name(overlay: str) -> None:
    """Before Kubernetes 1.32 a Service whose targetPort names a port of an init container (a native sidecar)
    gets no endpoints (kubernetes#127958), and this page promises 1.29: such ports are targeted by number."""
    objects = render(overlay)
    for name, service in named(objects, "Service").items():
        for w in workloads(objects):
            if not w.selected_by(service["spec"]["selector"]):
                continue
            sidecar_port_names = {p.get("name") for c in w.pod.get("initContainers", []) for p in c.get("ports", [])}
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                assert target not in sidecar_port_names, f"Service {name} targets {w.name}'s sidecar port {target!r}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_selects_pods_that_have_its_target_ports(overlay: str) -> None:
    objects = render(overlay)
    for name, service in named(objects, "Service").items():
        selected = [w for w in workloads(objects) if w.selected_by(service["spec"]["selector"])]
        assert selected, f"Service {name} selects no pod"
        for w in selected:
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                protocol = port.get("protocol", "TCP")
                assert any(has_port(c, target, protocol) for c in w.containers()), (
                    f"Service {name} port {port['name']} -> {target}/{protocol}: not a port of {w.kind} {w.name}"
                )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_network_policy_port_is_open_on_the_pods_it_guards(overlay: str) -> None:
    objects = render(overlay)
    for name, policy in named(objects, "NetworkPolicy").items():
        guarded = [w for w in workloads(objects) if w.selected_by(policy["spec"]["podSelector"])]
        assert guarded, f"NetworkPolicy {name} guards no pod"
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "namespaceSelector" in peer:
                    continue  # pods of another namespace (Prometheus): not made here
                assert any(w.selected_by(peer["podSelector"]) for w in workloads(objects)), f"{name}: {peer}"
            for port in rule.get("ports", []):
                for w in guarded:
                    assert any(has_port(c, port["port"], port.get("protocol", "TCP")) for c in w.containers()), (
                        f"NetworkPolicy {name} admits {port} but {w.name} has no such port"
                    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_config_map_and_secret_a_pod_uses_is_defined(overlay: str) -> None:
    objects = render(overlay)
    config_maps = set(named(objects, "ConfigMap"))
    # Secrets come from Secret objects, from the cert-manager Certificates that write them, or from the operator
    # before the first apply, as docs/kubernetes.md says (a secret that git must not hold).
    secrets = set(named(objects, "Secret")) | {c["spec"]["secretName"] for c in named(objects, "Certificate").values()}
    docs = (REPO_ROOT / "docs" / "kubernetes.md").read_text()
    secrets |= {name for name in OPERATOR_SECRETS if f"kubectl -n meshlet create secret generic {name}" in docs}
    for w in workloads(objects):
        for volume in w.pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, f"{w.name}: {volume}"
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, f"{w.name}: {volume}"
        for container in w.containers():
            for var in container.get("env", []):
                ref = var.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["name"] in config_maps, f"{w.name}: {var}"
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] in secrets, f"{w.name}: {var}"
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, f"{w.name}: {source}"
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, f"{w.name}: {source}"
            claims = {t["metadata"]["name"] for t in w.obj["spec"].get("volumeClaimTemplates", [])}
            mounted = {v["name"] for v in w.pod.get("volumes", [])} | claims
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in mounted, f"{w.name}/{container['name']} mounts undefined {mount['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_meshlet_image_tag_throughout_and_every_image_pinned(overlay: str) -> None:
    expected = f"{MESHLET_IMAGE}:{project_version()}"
    meshlet_images = set()
    for w in workloads(render(overlay)):
        for container in w.containers():
            image = container["image"]
            name, _, tag = image.rpartition(":")
            assert name, f"{w.name}/{container['name']}: pin a tag, not {image!r}"
            assert tag not in ("", "latest"), f"{w.name}/{container['name']}: pin a tag, not {image!r}"
            if name.rsplit("/", 1)[-1] == MESHLET_IMAGE:
                meshlet_images.add(image)
    assert meshlet_images == {expected}, "every meshlet container runs the image built from this version"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_upstream_and_authz_peer_in_a_meshlet_config_is_a_service(overlay: str) -> None:
    objects = render(overlay)
    pods = meshlet_pods(objects)
    assert set(pods) == set(SHOP)
    services = set(named(objects, "Service"))
    registered = {pod.config["service"]["name"] for pod in pods.values()}
    assert registered == set(SHOP), "each shop pod registers under its own name"
    registered.add(edge_pod(objects).config["service"]["name"])  # a caller with an identity: intentions name it
    for pod in pods.values():
        config = pod.config
        names = set(config.get("upstreams", {})) | set(config.get("sidecar", {}).get("routes", {}).values())
        for rule in config.get("authz", {}).get("rules", []):
            names |= {rule["from"], rule["to"]} - {"*"}
        for name in names:
            assert name in services, f"{pod.config_map}: {name} is not a Service"
            assert name in registered, f"{pod.config_map}: nothing registers {name} in Consul"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_meshlet_configs_load_with_the_pods_environment(overlay: str, tmp_path: Path) -> None:
    """Each ConfigMap, with the environment its container gets, is a valid meshlet config that points at the
    node's Consul agent, registers the pod IP, and sends traces to the Jaeger Service."""
    objects = render(overlay)
    jaeger = named(objects, "Service")["jaeger"]
    assert any(port["port"] == 4317 for port in jaeger["spec"]["ports"])
    client = workload(objects, "consul-client").container("consul")
    assert any(port.get("hostPort") == 8500 for port in client["ports"]), "pods reach the agent on HOST_IP:8500"
    for pod in meshlet_pods(objects).values():
        env = pod_env(pod.meshlet_container)
        config = load_config(config_path(pod, tmp_path), env=env, check_files=False)  # files mounted in the pod
        assert config.consul.address == "http://192.168.49.2:8500", pod.service  # the fake status.hostIP
        assert config.service.address == "10.244.1.7", pod.service  # the fake status.podIP
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
        if overlay == "cert-manager":
            assert config.tls.source == "files"
            assert str(config.tls.cert).startswith("/etc/meshlet-tls/")
        else:
            assert config.tls.source == "consul", "certificates come from the node agent's Connect CA"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_meshlet_configs_load_on_an_ipv6_node(overlay: str, tmp_path: Path) -> None:
    """On an IPv6 (or IPv6-primary dual-stack) cluster the downward API gives IPv6 addresses, and
    ``http://$(HOST_IP):8500`` comes out unbracketed: every config still loads, pointing at the node's agent."""
    fields = {**FAKE_FIELDS, "status.hostIP": "fd00:1::2", "status.podIP": "fd00:10:244::7"}
    for pod in meshlet_pods(render(overlay)).values():
        env = pod_env(pod.meshlet_container, fields)
        assert env["CONSUL_HTTP_ADDR"] == "http://fd00:1::2:8500", "what the kubelet expands"
        config = load_config(config_path(pod, tmp_path), env=env, check_files=False)
        assert config.consul.address == "http://[fd00:1::2]:8500", pod.service
        assert config.service.address == "fd00:10:244::7", pod.service
        if pod.sidecar_mode:
            assert split_host_port(config.sidecar.inbound)[0] == EVERY_ADDRESS, pod.service
        else:
            assert config.telemetry.metrics_host == EVERY_ADDRESS, pod.service
            assert pod_env(pod.app_container, fields)["SHOP_HOST"] == EVERY_ADDRESS, pod.service


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_mesh_port_is_15006_in_every_shop_pod(overlay: str, tmp_path: Path) -> None:
    objects = render(overlay)
    for pod in meshlet_pods(objects).values():
        container = pod.meshlet_container
        assert has_port(container, MESH_PORT), pod.service
        config = load_config(config_path(pod, tmp_path), env=pod_env(container), check_files=False)
        if pod.sidecar_mode:
            assert split_host_port(config.sidecar.inbound) == (EVERY_ADDRESS, MESH_PORT)
        else:
            assert pod_env(container)["SHOP_PORT"] == str(MESH_PORT)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_native_sidecars_and_their_probes(overlay: str, tmp_path: Path) -> None:
    """The sidecar is an init container with restartPolicy Always; the kubelet probes its admin /ready and
    /live on the pod IP (so the admin listens on every address). The app listens on loopback only, so the
    kubelet probes it through the sidecar: the sidecar's /ready includes its health, and its liveness probe is
    the sidecar's /app."""
    objects = render(overlay)
    pods = meshlet_pods(objects)
    for service in SIDECAR_MODE:
        pod = pods[service]
        sidecar = pod.meshlet_container
        assert sidecar in pod.workload.pod["initContainers"]
        assert sidecar["restartPolicy"] == "Always"
        config = load_config(config_path(pod, tmp_path), env=pod_env(sidecar), check_files=False)
        admin_host, admin_port = split_host_port(config.sidecar.admin)
        assert admin_host == EVERY_ADDRESS
        assert has_port(sidecar, admin_port)
        assert sidecar["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert sidecar["livenessProbe"]["httpGet"]["path"] == "/live"
        assert sidecar["startupProbe"]["httpGet"]["path"] == "/live", "/ready waits for the app: it cannot gate it"
        probed = sidecar["readinessProbe"]["httpGet"]["port"]
        assert any(p["containerPort"] == admin_port and probed in (admin_port, p.get("name")) for p in sidecar["ports"])
        app_host, app_port = split_host_port(config.sidecar.app or "")
        app = pod.app_container
        assert (app_host, pod_env(app)["SHOP_HOST"]) == ("127.0.0.1", "127.0.0.1"), "the plain app on loopback"
        assert pod_env(app)["SHOP_PORT"] == str(app_port)
        assert "ports" not in app, "a loopback port is no port of the pod"
        assert "readinessProbe" not in app, "the sidecar's /ready includes the app's health"
        assert app["livenessProbe"]["httpGet"] == {"path": "/app", "port": admin_port}, "the app's health alone"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_drain(overlay: str, tmp_path: Path) -> None:
    """SDK pods, after SIGTERM: deregistering (bounded by its request timeout), the drain (service.drain_grace)
    and the last spans' flush, with a margin before the kubelet's SIGKILL. Sidecar pods: the app's preStop waits,
    the app drains, then the sidecar (stopped last) drains inbound and keeps outbound up to drain_grace each."""
    for pod in meshlet_pods(render(overlay)).values():
        config = load_config(config_path(pod, tmp_path), env=pod_env(pod.meshlet_container), check_files=False)
        grace = config.service.drain_grace
        period = pod.workload.pod["terminationGracePeriodSeconds"]
        if pod.sidecar_mode:
            pre_stop = pod.app_container["lifecycle"]["preStop"]["exec"]["command"]
            _, admin_port = split_host_port(config.sidecar.admin)
            assert pre_stop[1:] == ["/etc/meshlet-hooks/drain_hook.py", str(admin_port)], "POST /drain, in the pod"
            assert period >= PRESTOP_NOTICE_S + grace + 2 * grace, pod.service
        else:
            worst = DEREGISTER_TIMEOUT_S + grace + SPAN_FLUSH_S
            assert period >= worst + SHUTDOWN_MARGIN_S, f"{pod.service}: {period}s leaves no margin over {worst}s"


PROMETHEUS = {"namespace": "monitoring", "app.kubernetes.io/name": "prometheus"}  # base's shop-metrics peer


def metrics_port(pod: MeshletPod, tmp_path: Path) -> int:
    """Where `pod` serves /metrics: a sidecar on its admin port, an SDK service on telemetry.metrics_port."""
    config = load_config(config_path(pod, tmp_path), env=pod_env(pod.meshlet_container), check_files=False)
    if pod.sidecar_mode:
        return split_host_port(config.sidecar.admin)[1]
    assert config.telemetry.metrics_port is not None, pod.service
    return config.telemetry.metrics_port


def admits_prometheus(peer: Obj) -> bool:
    namespace: dict[str, str] = peer.get("namespaceSelector", {}).get("matchLabels", {})
    pods: dict[str, str] = peer.get("podSelector", {}).get("matchLabels", {})
    return namespace == {"kubernetes.io/metadata.name": PROMETHEUS["namespace"]} and pods.items() <= {
        ("app.kubernetes.io/name", PROMETHEUS["app.kubernetes.io/name"])
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_finds_and_may_scrape_every_shop_pod(overlay: str, tmp_path: Path) -> None:
    """Each shop pod says where its /metrics is (prometheus.io/* annotations, for kubernetes_sd), declares that
    port, and a NetworkPolicy admits Prometheus to it (a pod that any policy selects takes nothing else)."""
    objects = render(overlay)
    policies = named(objects, "NetworkPolicy").values()
    for pod in meshlet_pods(objects).values():
        port = metrics_port(pod, tmp_path)
        annotations = pod.workload.obj["spec"]["template"]["metadata"].get("annotations", {})
        expected = {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
        assert expected.items() <= annotations.items(), pod.service
        assert has_port(pod.meshlet_container, port), pod.service
        admitted = {
            declared["port"]
            for policy in policies
            if pod.workload.selected_by(policy["spec"]["podSelector"])
            for rule in policy["spec"].get("ingress", [])
            if any(admits_prometheus(peer) for peer in rule.get("from", []))
            for declared in rule.get("ports", [])
        }
        assert port in admitted, f"{pod.service}: no NetworkPolicy admits Prometheus to {port}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_monitor_scrapes_every_shop_pods_metrics_port(overlay: str, tmp_path: Path) -> None:
    """k8s/monitoring's ServiceMonitor picks every shop Service, and one of its endpoints names the Service port
    that leads to the pod's /metrics."""
    [monitor] = [o for o in render_extra("monitoring") if o["kind"] == "ServiceMonitor"]
    assert monitor["metadata"]["namespace"] == "meshlet"
    wanted = monitor["spec"]["selector"]["matchLabels"]
    endpoint_ports = {e["port"]: e["path"] for e in monitor["spec"]["endpoints"]}
    objects = render(overlay)
    services = named(objects, "Service")
    for pod in meshlet_pods(objects).values():
        service = services[pod.service]
        assert wanted.items() <= service["metadata"]["labels"].items(), pod.service
        port = metrics_port(pod, tmp_path)
        scraped = [p for p in service["spec"]["ports"] if p.get("name") in endpoint_ports]
        assert [p.get("targetPort") for p in scraped] == [port], pod.service
        assert endpoint_ports[scraped[0]["name"]] == "/metrics"


AUTH_METHOD = "meshlet-k8s"


def consul_config(objects: list[Obj]) -> str:
    """The files of the ConfigMap the Consul servers mount at /consul/config."""
    volumes = {v["name"]: v for v in workload(objects, "consul-server").pod["volumes"]}
    config_map = named(objects, "ConfigMap")[volumes["config"]["configMap"]["name"]]
    return "\n".join(config_map["data"].values())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_consul_acls_are_on_with_default_deny_in_prod_and_off_in_dev(overlay: str) -> None:
    """Open Consul lets anything that reaches an agent fetch any service's certificate; prod closes it, dev stays
    open (docs/kubernetes.md says so)."""
    hcl = consul_config(render(overlay))
    if overlay == "prod":
        assert re.search(r"acl\s*{[^}]*enabled\s*=\s*true", hcl), hcl
        assert re.search(r'default_policy\s*=\s*"deny"', hcl), hcl
    else:
        assert "acl" not in hcl


def test_each_prod_shop_pod_logs_in_to_consul_as_its_own_service(tmp_path: Path) -> None:
    """The auth method binds a login to the service named like the pod's service account: each shop pod runs as
    its own, logs in before anything reads the token, and meshlet (and payments' ledger) read the token file."""
    objects = render("prod")
    accounts = named(objects, "ServiceAccount")
    [job] = [o for o in objects if o["kind"] == "Job" and o["metadata"]["name"] == "consul-acl-init"]
    script = "\n".join(job["spec"]["template"]["spec"]["containers"][0]["args"])
    assert f"auth-method create -type=kubernetes -name={AUTH_METHOD}" in script
    assert "bind service '${serviceaccount.name}'" in script, "a token may write only its own service"
    for pod in meshlet_pods(objects).values():
        spec = pod.workload.pod
        assert spec["serviceAccountName"] == pod.service, pod.service
        assert pod.service in accounts, pod.service
        login = spec["initContainers"][0]
        assert login["name"] == "consul-login", f"{pod.service}: the login must run before any other container"
        command = " ".join(login["args"])
        assert f"-method={AUTH_METHOD}" in command
        sink = re.search(r"-token-sink-file=([^\s;]+)", command)
        assert sink, command
        token_file = Path(sink.group(1))
        written = {m["name"] for m in login["volumeMounts"] if m["mountPath"] == str(token_file.parent)}
        readers = [pod.meshlet_container] + ([pod.app_container] if pod.service == "payments" else [])
        for container in readers:
            assert pod_env(container)["CONSUL_HTTP_TOKEN_FILE"] == str(token_file), container["name"]
            mounted = {m["name"] for m in container["volumeMounts"] if m["mountPath"] == str(token_file.parent)}
            assert mounted, f"{pod.service}/{container['name']} does not see the token"
            assert mounted == written, f"{pod.service}/{container['name']} does not see the token"
        config = load_config(config_path(pod, tmp_path), env=pod_env(pod.meshlet_container), check_files=False)
        assert config.consul.token_file == token_file, pod.service


def test_the_prod_consul_agents_take_their_tokens_from_the_acl_volume() -> None:
    objects = render("prod")
    for name in ("consul-server", "consul-client"):
        w = workload(objects, name)
        consul = w.container("consul")
        assert "-config-dir=/consul/acl" in consul["args"], name
        assert any(m["mountPath"] == "/consul/acl" for m in consul["volumeMounts"]), name
        [writer] = w.pod["initContainers"]
        assert any(m["mountPath"] == "/consul/acl" for m in writer["volumeMounts"]), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_agents_http_port_is_a_host_port(overlay: str) -> None:
    """8502 (gRPC, for Envoy) was a hostPort nothing used; 8500 is how pods reach their node's agent."""
    host_ports = {
        (w.name, p["hostPort"])
        for w in workloads(render(overlay))
        for c in w.containers()
        for p in c.get("ports", [])
        if "hostPort" in p
    }
    assert host_ports == {("consul-client", 8500)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_consul_agents_schedule_first_and_have_a_service_that_stays_on_the_node(overlay: str) -> None:
    """Without its node's agent no pod there registers or gets a certificate: the agents get a priority class
    above every ordinary pod. And where the CNI ignores hostPorts, consul-agent (internalTrafficPolicy Local)
    reaches the same node's agent."""
    objects = render(overlay)
    agents = workload(objects, "consul-client")
    priority = named(objects, "PriorityClass")[agents.pod["priorityClassName"]]
    assert priority["value"] >= 1_000_000, "above ordinary pods"
    assert not priority.get("globalDefault")
    service = named(objects, "Service")["consul-agent"]["spec"]
    assert service["internalTrafficPolicy"] == "Local"
    assert agents.selected_by(service["selector"])
    assert [(p["port"], p["targetPort"]) for p in service["ports"]] == [(8500, 8500)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prod_samples_a_fraction_of_traces_and_dev_every_one(overlay: str, tmp_path: Path) -> None:
    """Jaeger all-in-one keeps spans in memory: prod sends it a sample, and the root's decision holds downstream."""
    for pod in meshlet_pods(render(overlay)).values():
        ratio = load_config(
            config_path(pod, tmp_path), env=pod_env(pod.meshlet_container), check_files=False
        ).telemetry.sample_ratio
        if overlay == "prod":
            assert 0 < ratio <= 0.1, pod.service
        else:
            assert ratio == 1.0, pod.service


def test_dev_runs_one_replica_of_everything() -> None:
    for w in workloads(render("dev")):
        if w.kind != "DaemonSet":
            assert w.obj["spec"]["replicas"] == 1, w.name


def test_prod_replicas_and_disruption_budgets() -> None:
    objects = render("prod")
    budgets = named(objects, "PodDisruptionBudget")
    for service in SHOP:
        w = workload(objects, service)
        assert w.obj["spec"]["replicas"] >= 2, service
        assert any(
            w.selected_by(b["spec"]["selector"]) and b["spec"].get("minAvailable") == 1 for b in budgets.values()
        )
    servers = workload(objects, "consul-server")
    assert servers.obj["spec"]["replicas"] == 3
    assert {"name": "BOOTSTRAP_EXPECT", "value": "3"} in servers.container("consul")["env"]
    assert budgets["consul-server"]["spec"]["maxUnavailable"] == 1


def test_prod_security_context_and_resources_everywhere() -> None:
    for w in workloads(render("prod")):
        pod_security = w.pod["securityContext"]
        assert pod_security["runAsNonRoot"] is True, w.name
        assert isinstance(pod_security["runAsUser"], int), w.name
        assert pod_security["runAsUser"] > 0, w.name
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, w.name
        assert w.pod["automountServiceAccountToken"] is False, w.name
        tmp_volumes = {v["name"] for v in w.pod["volumes"] if "emptyDir" in v}
        for container in w.containers():
            where = f"{w.name}/{container['name']}"
            security: Obj = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in security["capabilities"], where
            assert any(m["mountPath"] == "/tmp" and m["name"] in tmp_volumes for m in container["volumeMounts"]), where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{where} {bound}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_orders_and_inventory_share_their_state_in_redis_in_prod_only(overlay: str) -> None:
    """Two replicas with state of their own disagree (GetOrder per replica, stock split): prod's orders and
    inventory keep it in one Redis, which only they and the edge may reach; dev keeps it in its single replica."""
    objects = render(overlay)
    stores = {service: pod_env(workload(objects, service).container(service)).get("SHOP_STORE") for service in SHOP}
    if overlay != "prod":
        assert set(stores.values()) == {None}, stores
        assert "redis" not in named(objects, "Service")
        return
    assert stores == {"gateway": None, "orders": STORE_URL, "inventory": STORE_URL, "payments": None}
    assert store_url(STORE_URL) == STORE_URL  # what the services accept
    address = urllib.parse.urlsplit(STORE_URL)
    service, port = named(objects, "Service")[str(address.hostname)], address.port
    assert any(p["port"] == port for p in service["spec"]["ports"])
    [redis] = [w for w in workloads(objects) if w.selected_by(service["spec"]["selector"])]
    admitted = set()
    for policy in named(objects, "NetworkPolicy").values():
        if not redis.selected_by(policy["spec"]["podSelector"]):
            continue
        for rule in policy["spec"].get("ingress", []):
            assert {p["port"] for p in rule["ports"]} == {port}, policy["metadata"]["name"]
            peers = [peer["podSelector"] for peer in rule["from"]]
            admitted |= {w.name for w in workloads(objects) if any(w.selected_by(peer) for peer in peers)}
    assert admitted == {"orders", "inventory", "edge"}, "the edge keeps its rate limits and cache there"


def test_prod_network_policies_admit_only_the_mesh_port_between_shop_pods() -> None:
    objects = render("prod")
    policies = named(objects, "NetworkPolicy")
    deny_all = [p for p in policies.values() if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny_all, "a default-deny ingress policy"
    shop = [workload(objects, s) for s in SHOP]
    for w in shop:
        admitted_from_shop = set()
        for policy in policies.values():
            if not w.selected_by(policy["spec"]["podSelector"]):
                continue
            for rule in policy["spec"].get("ingress", []):
                peers = rule.get("from", [])
                assert peers, f"{policy['metadata']['name']} admits every source"
                if any(any(other.selected_by(peer["podSelector"]) for other in shop) for peer in peers):
                    admitted_from_shop |= {(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]}
        assert admitted_from_shop == {("TCP", MESH_PORT)}, w.name
