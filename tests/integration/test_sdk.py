"""The SDK end to end: a real dev agent, real echo server processes served through ``Mesh.serve``, and this test
process calling them through ``mesh.channel``. Everything asserted is what a caller or an operator would see."""

from __future__ import annotations

import asyncio
import collections
import signal
import sys

import grpc
import pytest

from meshlet.errors import ErrorReason, error_info
from meshlet.mesh import Mesh
from meshlet.transport import channels
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration.conftest import EchoFleet, MeshFactory
from tests.support.agents import Agent
from tests.support.echo_calls import WATCH, watch_for, watch_until
from tests.support.plain_app import plain_app
from tests.support.processes import Processes, eventually, wait_until

pytestmark = pytest.mark.slow

HELLO = echo_pb2.EchoRequest(message="hello")


async def set_health(port: int, status: str) -> None:
    """Set one echo server's grpc.health.v1 status, which its TTL check follows, on a connection of its own."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as direct:
        try:
            await echo_pb2_grpc.EchoStub(direct).Echo(HELLO, metadata=(("x-echo-set-health", status),), timeout=5)
        except grpc.aio.AioRpcError:
            pass  # an instance told to fail every call sets its health first, then fails this one too


def listed(mesh: Mesh, service: str) -> int:
    """How many instances of `service` the mesh balances over: what discovery last said is passing."""
    return len(mesh.upstream(service).describe()["endpoints"])


async def calls_received(port: int) -> dict[str, int]:
    """Ask one echo server directly how many calls of each method it received."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await echo_pb2_grpc.EchoStub(channel).Stats(echo_pb2.StatsRequest(), timeout=5)
    return dict(reply.calls)


async def test_calls_spread_over_every_instance(fleet: EchoFleet, mesh_factory: MeshFactory) -> None:
    for name in ("a", "b", "c"):
        fleet.start(name, wait=False)
    for name in ("a", "b", "c"):
        fleet.wait_passing(name)
    stub = echo_pb2_grpc.EchoStub(mesh_factory().channel(fleet.service))

    served = collections.Counter([(await stub.Echo(HELLO, timeout=5)).served_by for _ in range(90)])

    assert set(served) == {"a", "b", "c"}
    assert min(served.values()) >= 10, served


async def test_an_always_failing_instance_is_ejected_and_no_idempotent_call_fails(
    fleet: EchoFleet, mesh_factory: MeshFactory
) -> None:
    fleet.start("good-1")
    fleet.start("good-2")
    fleet.start("bad", "--fail-code", "UNAVAILABLE")
    mesh = mesh_factory()
    stub = echo_pb2_grpc.EchoStub(mesh.channel(fleet.service))

    replies = [await stub.Echo(HELLO, timeout=5) for _ in range(150)]

    assert {r.served_by for r in replies} == {"good-1", "good-2"}
    received_by_bad = (await calls_received(fleet.ports["bad"])).get("Echo", 0)
    assert received_by_bad <= 5 + 2, "the bad instance kept getting calls after its breaker should have opened"
    assert "1 open" in repr(mesh.upstream(fleet.service))


async def test_a_non_idempotent_call_that_failed_at_a_server_is_never_resent(
    fleet: EchoFleet, mesh_factory: MeshFactory
) -> None:
    fleet.start("x", "--fail-code", "UNAVAILABLE")
    fleet.start("y", "--fail-code", "UNAVAILABLE")
    stub = echo_pb2_grpc.EchoStub(mesh_factory().channel(fleet.service))

    with pytest.raises(grpc.aio.AioRpcError) as once:
        await stub.EchoOnce(HELLO, timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as idempotent:
        await stub.Echo(HELLO, timeout=5)

    assert once.value.code() == grpc.StatusCode.UNAVAILABLE
    assert idempotent.value.code() == grpc.StatusCode.UNAVAILABLE
    counts = [await calls_received(fleet.ports[name]) for name in ("x", "y")]
    assert sum(c.get("EchoOnce", 0) for c in counts) == 1, "EchoOnce declares no idempotency: sent exactly once"
    assert sum(c.get("Echo", 0) for c in counts) == 3, "Echo is IDEMPOTENT: sent max_attempts (3) times"


@pytest.mark.parametrize(
    "details",
    [
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused",
        "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed",
        "sendmsg: Broken pipe",
    ],
)
async def test_a_handler_passing_a_downstream_connection_error_on_is_never_resent(
    fleet: EchoFleet, mesh_factory: MeshFactory, details: str
) -> None:
    """A handler that did its work and then answers ``context.abort(e.code(), e.details())`` with a downstream's
    connection error: the text is the server's, and proves nothing about this call."""
    fleet.start("x")
    fleet.start("y")
    stub = echo_pb2_grpc.EchoStub(mesh_factory().channel(fleet.service))

    metadata = (("x-echo-fail", "UNAVAILABLE"), ("x-echo-fail-details", details))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.EchoOnce(HELLO, metadata=metadata, timeout=5)

    assert (failed.value.code(), failed.value.details()) == (grpc.StatusCode.UNAVAILABLE, details)
    counts = [await calls_received(fleet.ports[name]) for name in ("x", "y")]
    assert sum(c.get("EchoOnce", 0) for c in counts) == 1


async def test_a_dead_upstream_behind_a_healthy_server_is_not_that_servers_failure(
    procs: Processes, agent: Agent, mesh_factory: MeshFactory
) -> None:
    """mid's handler calls ledger, which is dead: mid answers UPSTREAM_FAILED, so the caller neither retries
    mid (its handler runs once per call) nor counts it against mid's breaker (a Ping to mid still works)."""
    ledger = EchoFleet(procs, agent)
    ledger.start("ledger")
    mid = EchoFleet(procs, agent)
    mid.start("mid", "--upstream", ledger.service)
    ledger.servers["ledger"].signal(signal.SIGKILL)
    wait_until(lambda: not ledger.passing_ports(), 10, "the dead ledger to leave Consul")
    mesh = mesh_factory()
    stub = echo_pb2_grpc.EchoStub(mesh.channel(mid.service))

    for _ in range(6):  # more than the breaker's 5 failures
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Echo(HELLO, timeout=5)
        assert failed.value.code() == grpc.StatusCode.ABORTED, failed.value
        info = error_info(failed.value)
        assert info is not None
        assert (info.reason, info.metadata["upstream"]) == (ErrorReason.UPSTREAM_FAILED, ledger.service)
        assert info.metadata["upstream_reason"] in (ErrorReason.NO_HEALTHY_ENDPOINT, ErrorReason.BREAKER_OPEN)

    assert (await calls_received(mid.ports["mid"]))["Echo"] == 6
    assert [endpoint["breaker"] for endpoint in mesh.upstream(mid.service).describe()["endpoints"]] == ["closed"]
    reply = await stub.Stats(echo_pb2.StatsRequest(), timeout=5)
    assert reply.served_by == "mid"


async def test_a_sigkilled_instance_costs_no_idempotent_call(fleet: EchoFleet, mesh_factory: MeshFactory) -> None:
    for name in ("a", "b", "c"):
        fleet.start(name)
    stub = echo_pb2_grpc.EchoStub(mesh_factory().channel(fleet.service))
    stop = asyncio.Event()
    failures: list[BaseException] = []
    served: collections.Counter[str] = collections.Counter()

    async def caller() -> None:
        while not stop.is_set():
            try:
                served[(await stub.Echo(HELLO, timeout=5)).served_by] += 1
            except grpc.aio.AioRpcError as error:
                failures.append(error)

    workers = [asyncio.create_task(caller()) for _ in range(8)]
    await asyncio.sleep(1.0)
    fleet.servers["b"].signal(signal.SIGKILL)
    await asyncio.sleep(2.5)
    stop.set()
    await asyncio.gather(*workers)

    assert not failures, failures[:3]
    assert served["a"], served
    assert served["b"], served
    assert served["c"], served


async def test_a_handler_deadline_flows_into_its_outbound_calls(
    procs: Processes, agent: Agent, mesh_factory: MeshFactory
) -> None:
    backend = EchoFleet(procs, agent)
    backend.start("backend")
    front = EchoFleet(procs, agent)
    front.start("front", "--upstream", backend.service)
    stub = echo_pb2_grpc.EchoStub(mesh_factory().channel(front.service))

    reply = await stub.Echo(echo_pb2.EchoRequest(message="deadline?"), timeout=2.0)

    seen_by_backend = float(reply.message)  # the backend's context.time_remaining()
    assert 0.5 < seen_by_backend < 2.0, "the backend should see what was left of the caller's 2 s, not a fresh 5 s"


async def test_callers_with_short_deadlines_do_not_eject_a_healthy_instance(
    fleet: EchoFleet, mesh_factory: MeshFactory
) -> None:
    """A caller whose own deadline is shorter than the instance's latency fails alone: the instance stays in."""
    fleet.start("a", "--delay-ms", "50")
    mesh = mesh_factory()
    stub = echo_pb2_grpc.EchoStub(mesh.channel(fleet.service))
    assert (await stub.Echo(HELLO, timeout=5)).served_by == "a"  # discovery has answered, the channel is up

    for _ in range(5):
        with pytest.raises(grpc.aio.AioRpcError) as impatient:
            await stub.Echo(HELLO, timeout=0.02)
        assert impatient.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

    assert "breakers: 1 closed" in repr(mesh.upstream(fleet.service))
    assert (await stub.Echo(HELLO, timeout=5)).served_by == "a"


async def test_an_instance_slower_than_the_upstreams_timeout_is_ejected(
    fleet: EchoFleet, mesh_factory: MeshFactory
) -> None:
    fleet.start("a")
    mesh = mesh_factory(**{"upstream_defaults.timeout": "200ms"})
    stub = echo_pb2_grpc.EchoStub(mesh.channel(fleet.service))
    assert (await stub.Echo(HELLO)).served_by == "a"  # discovery has answered, the channel is up
    stalled = (("x-echo-sleep-ms", "2000"),)  # the instance now takes 2 s, ten times the upstream's timeout

    for _ in range(5):  # no deadline of their own: each gives the instance the upstream's whole timeout
        with pytest.raises(grpc.aio.AioRpcError) as timed_out:
            await stub.Echo(HELLO, metadata=stalled)
        assert timed_out.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Echo(HELLO)

    info = error_info(refused.value)
    assert info is not None
    assert info.reason == ErrorReason.BREAKER_OPEN
    assert "breakers: 1 open" in repr(mesh.upstream(fleet.service))


async def test_a_new_instance_gets_calls_soon_after_it_registers(fleet: EchoFleet, mesh_factory: MeshFactory) -> None:
    fleet.start("first")
    stub = echo_pb2_grpc.EchoStub(mesh_factory().channel(fleet.service))
    assert (await stub.Echo(HELLO, timeout=5)).served_by == "first"

    fleet.start("second")
    seen: set[str] = set()
    for _ in range(200):
        seen.add((await stub.Echo(HELLO, timeout=5)).served_by)
        if "second" in seen:
            break
        await asyncio.sleep(0.02)
    assert "second" in seen


async def test_an_instance_that_reports_not_serving_leaves_the_balancer(
    fleet: EchoFleet, mesh_factory: MeshFactory
) -> None:
    """Its TTL check follows its grpc.health.v1 status, so Consul stops listing it and callers stop using it."""
    fleet.start("steady")
    fleet.start("sick")
    stub = echo_pb2_grpc.EchoStub(mesh_factory().channel(fleet.service))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{fleet.ports['sick']}") as direct:
        await echo_pb2_grpc.EchoStub(direct).Echo(HELLO, metadata=(("x-echo-set-health", "NOT_SERVING"),), timeout=5)

    wait_until(lambda: fleet.ports["sick"] not in fleet.passing_ports(), 15, "the sick instance to turn critical")
    await asyncio.sleep(1.0)  # discovery follows Consul's change
    served = collections.Counter([(await stub.Echo(HELLO, timeout=5)).served_by for _ in range(30)])

    assert set(served) == {"steady"}, served


async def test_calls_go_on_when_consul_stops(agent: Agent, fleet: EchoFleet, mesh_factory: MeshFactory) -> None:
    fleet.start("a")
    fleet.start("b")
    stub = echo_pb2_grpc.EchoStub(mesh_factory().channel(fleet.service))
    assert (await stub.Echo(HELLO, timeout=5)).message == "hello"

    assert agent.child is not None
    agent.child.signal(signal.SIGKILL)
    agent.child.wait(10)
    served = collections.Counter([(await stub.Echo(HELLO, timeout=5)).served_by for _ in range(40)])

    assert set(served) == {"a", "b"}, "the last good endpoint set stays in use while Consul is away"


async def test_every_endpoint_gone_fails_fast_with_unavailable(fleet: EchoFleet, mesh_factory: MeshFactory) -> None:
    fleet.start("only")
    stub = echo_pb2_grpc.EchoStub(mesh_factory().channel(fleet.service))
    assert (await stub.Echo(HELLO, timeout=5)).served_by == "only"

    fleet.servers["only"].signal(signal.SIGTERM)
    fleet.servers["only"].wait(15)
    wait_until(lambda: not fleet.passing_ports(), 10, "the instance to leave Consul")
    await asyncio.sleep(0.5)  # discovery follows Consul's change

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Echo(HELLO, timeout=30)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(failed.value)
    assert info is not None
    assert info.reason == ErrorReason.NO_HEALTHY_ENDPOINT
    assert fleet.service in (failed.value.details() or "")


async def test_a_service_nobody_registered_fails_with_its_name(fleet: EchoFleet, mesh_factory: MeshFactory) -> None:
    stub = echo_pb2_grpc.EchoStub(mesh_factory().channel("no-such-service"))

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Echo(HELLO, timeout=10)

    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no-such-service" in (failed.value.details() or "")


async def test_retries_never_outlive_the_deadline(fleet: EchoFleet, mesh_factory: MeshFactory) -> None:
    fleet.start("slow-and-failing", "--fail-code", "UNAVAILABLE", "--delay-ms", "150")
    mesh = mesh_factory(**{"upstream_defaults.retry.max_attempts": 5, "upstream_defaults.breaker.failures": 100})
    stub = echo_pb2_grpc.EchoStub(mesh.channel(fleet.service))

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Echo(HELLO, timeout=0.4)

    assert failed.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    attempts = (await calls_received(fleet.ports["slow-and-failing"])).get("Echo", 0)
    assert 1 <= attempts <= 3, f"{attempts} attempts of 150 ms cannot fit in a 400 ms deadline"


async def test_with_every_endpoint_failing_retries_stay_within_the_budget(
    fleet: EchoFleet, mesh_factory: MeshFactory
) -> None:
    fleet.start("x", "--fail-code", "UNAVAILABLE")
    fleet.start("y", "--fail-code", "UNAVAILABLE")
    mesh = mesh_factory(
        **{
            "upstream_defaults.breaker.failures": 10_000,  # keep breakers out of it: this is about the budget
            "upstream_defaults.retry.budget_min_per_s": 0,
            "upstream_defaults.retry.budget_ratio": 0.2,
        }
    )
    stub = echo_pb2_grpc.EchoStub(mesh.channel(fleet.service))
    calls = 100

    reasons: collections.Counter[str] = collections.Counter()
    for _ in range(calls):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Echo(HELLO, timeout=5)
        info = error_info(failed.value)
        reasons[info.reason if info is not None else failed.value.code().name] += 1

    received = 0
    for name in ("x", "y"):
        received += (await calls_received(fleet.ports[name])).get("Echo", 0)
    assert received <= calls * 1.2 + 1, f"{received} attempts for {calls} calls: the budget allows 20 % retries"
    assert reasons[ErrorReason.BUDGET_EXHAUSTED] > 0, reasons


async def test_all_four_rpc_kinds_pass_through_the_mesh(fleet: EchoFleet, mesh_factory: MeshFactory) -> None:
    fleet.start("a")
    stub = echo_pb2_grpc.EchoStub(mesh_factory().channel(fleet.service))

    unary = await stub.Echo(HELLO, timeout=5)
    server_stream = [r.message async for r in stub.ServerStream(HELLO, timeout=5)]
    client_stream = await stub.ClientStream(iter([echo_pb2.EchoRequest(message=m) for m in "xyz"]), timeout=5)
    bidi = [r.message async for r in stub.BidiStream(iter([echo_pb2.EchoRequest(message=m) for m in "pq"]), timeout=5)]

    assert unary.message == "hello"
    assert server_stream == ["hello-0", "hello-1", "hello-2"]
    assert client_stream.message == "x+y+z"
    assert bidi == ["p", "q"]


async def test_a_stream_its_reader_leaves_early_gives_back_its_slot(
    fleet: EchoFleet, mesh_factory: MeshFactory
) -> None:
    """Regression: a response stream read only in part used to hold its bulkhead slot for good, so after
    max_in_flight such streams every call failed RESOURCE_EXHAUSTED."""
    fleet.start("a")
    mesh = mesh_factory(**{"upstream_defaults.max_in_flight": 2})
    stub = echo_pb2_grpc.EchoStub(mesh.channel(fleet.service))

    for _ in range(5):
        async for _reply in stub.ServerStream(HELLO, timeout=5):
            break  # the first message is all this reader wants

    assert (await stub.Echo(HELLO, timeout=5)).message == "hello"
    for _ in range(500):  # completion work runs on the loop: give it turns, never wall-clock waits
        if mesh.upstream(fleet.service).bulkhead.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert mesh.upstream(fleet.service).bulkhead.in_flight == 0


async def test_raw_bytes_pass_without_serializers(fleet: EchoFleet, mesh_factory: MeshFactory) -> None:
    fleet.start("a")
    channel = mesh_factory().channel(fleet.service)
    echo = channel.unary_unary("/meshlet_api.echo.v1.Echo/Echo")

    raw = await echo(HELLO.SerializeToString(), timeout=5)

    assert isinstance(raw, bytes)
    assert echo_pb2.EchoReply.FromString(raw).message == "hello"


def test_sigterm_deregisters_and_exits_zero(fleet: EchoFleet) -> None:
    server = fleet.start("leaving")

    server.signal(signal.SIGTERM)

    assert server.wait(20) == 0, server.output()
    services = fleet.agent.get("/v1/agent/services")
    assert not any(s["Service"] == fleet.service for s in services.values()), "it must deregister before it exits"


# ---------------------------------------------------------------- long-lived calls across discovery changes


async def test_a_watch_outlives_a_flap_of_its_instance_in_consul(
    fleet: EchoFleet, mesh_factory: MeshFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance that leaves the passing set for longer than the channel's grace and comes back keeps its
    streams: its channel closes only once they have ended."""
    monkeypatch.setattr(channels, "CLOSE_GRACE_S", 0.2)  # the grace this test outlasts, 30 s by default
    fleet.start("a")
    port = fleet.ports["a"]
    mesh = mesh_factory()
    stub = echo_pb2_grpc.EchoStub(mesh.channel(fleet.service))
    watch = stub.ServerStream(HELLO, metadata=WATCH, timeout=60)
    assert (await watch.read()).served_by == "a"

    await set_health(port, "NOT_SERVING")
    await watch_until(watch, lambda: listed(mesh, fleet.service) == 0, "the instance to leave the passing set")
    await watch_for(watch, 5 * channels.CLOSE_GRACE_S)
    await set_health(port, "SERVING")
    await watch_until(watch, lambda: listed(mesh, fleet.service) == 1, "the instance to pass again")
    await watch_for(watch, 0.2)

    watch.cancel()
    assert (await stub.Echo(HELLO, timeout=5)).served_by == "a"


async def test_an_instance_that_flaps_in_consul_keeps_its_open_breaker(
    fleet: EchoFleet, mesh_factory: MeshFactory
) -> None:
    fleet.start("good")
    fleet.start("bad", "--fail-code", "UNAVAILABLE")
    mesh = mesh_factory()
    upstream = mesh.upstream(fleet.service)
    stub = echo_pb2_grpc.EchoStub(mesh.channel(fleet.service))
    for _ in range(100):
        assert (await stub.Echo(HELLO, timeout=5)).served_by == "good"
        if "1 open" in repr(upstream):
            break
    assert "breakers: 1 closed, 1 open" in repr(upstream)

    await set_health(fleet.ports["bad"], "NOT_SERVING")
    await eventually(lambda: listed(mesh, fleet.service) == 1, "the bad instance to leave the passing set")
    await set_health(fleet.ports["bad"], "SERVING")
    await eventually(lambda: listed(mesh, fleet.service) == 2, "the bad instance to pass again")
    received = (await calls_received(fleet.ports["bad"])).get("Echo", 0)
    replies = [await stub.Echo(HELLO, timeout=5) for _ in range(20)]

    assert "breakers: 1 closed, 1 open" in repr(upstream)
    assert {reply.served_by for reply in replies} == {"good"}
    assert (await calls_received(fleet.ports["bad"])).get("Echo", 0) == received, "the flap re-admitted it"


async def test_a_watch_the_mesh_must_end_ends_with_unavailable_saying_why(
    fleet: EchoFleet, mesh_factory: MeshFactory
) -> None:
    fleet.start("a")
    mesh = mesh_factory()
    watch = echo_pb2_grpc.EchoStub(mesh.channel(fleet.service)).ServerStream(HELLO, metadata=WATCH, timeout=60)
    assert (await watch.read()).served_by == "a"

    await mesh.close()  # the process is shutting down under its reader
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await watch_until(watch, lambda: False, "the mesh to end the watch")

    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
    info = error_info(ended.value)
    assert info is not None
    assert info.reason == ErrorReason.CHANNEL_CLOSED


# ------------------------------------------------------------------------------------------ ports and addresses


def test_a_second_service_on_a_taken_port_exits_1_naming_it_and_registers_nothing(fleet: EchoFleet) -> None:
    """grpc shares a port between servers by default (SO_REUSEPORT): the second would take half the first one's
    calls, registered under the same instance id. meshlet's server owns its port instead."""
    fleet.start("first")
    port = fleet.ports["first"]

    second = fleet.start("second", port=port, wait=False)

    assert second.wait(20) == 1, second.output()
    assert f"cannot serve {fleet.service} on 127.0.0.1:{port} (Address already in use" in second.output()
    assert "Traceback" not in second.output()
    instances = [s for s in fleet.agent.get("/v1/agent/services").values() if s["Service"] == fleet.service]
    assert len(instances) == 1, instances
    assert fleet.servers["first"].alive()


async def test_a_service_on_a_plain_apps_port_exits_1_and_does_not_register_as_that_app(fleet: EchoFleet) -> None:
    async with plain_app() as app:  # plain grpcio: SO_REUSEPORT on, as grpc sets it by default
        child = fleet.start("squatter", port=app.port, wait=False)

        assert child.wait(20) == 1, child.output()
        assert f"127.0.0.1:{app.port} (Address already in use" in child.output()
        assert fleet.agent.passing(fleet.service) == []
        assert not [s for s in fleet.agent.get("/v1/agent/services").values() if s["Service"] == fleet.service]


async def test_by_default_a_service_registers_the_address_it_listens_on(
    fleet: EchoFleet, mesh_factory: MeshFactory
) -> None:
    """No service.address: the one mesh.serve(host=...) binds is registered, so callers reach it."""
    fleet.start("elsewhere", "--host", "127.0.0.3")

    [entry] = fleet.agent.passing(fleet.service)
    assert entry["Service"]["Address"] == "127.0.0.3"
    stub = echo_pb2_grpc.EchoStub(mesh_factory().channel(fleet.service))
    assert (await stub.Echo(HELLO, timeout=5)).served_by == "elsewhere"


async def test_without_a_host_a_service_listens_on_its_service_address_only(fleet: EchoFleet) -> None:
    """mesh.serve(server, port) binds service.address (not every interface) and registers it: they agree."""
    fleet.start("bound", "--host", "default", env={"MESHLET_SERVICE__ADDRESS": "127.0.0.2"})
    port = fleet.ports["bound"]

    [entry] = fleet.agent.passing(fleet.service)
    assert (entry["Service"]["Address"], entry["Service"]["Port"]) == ("127.0.0.2", port)
    assert (await calls_received_at("127.0.0.2", port)) is not None
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await calls_received_at("127.0.0.1", port)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def calls_received_at(host: str, port: int) -> dict[str, int]:
    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        reply = await echo_pb2_grpc.EchoStub(channel).Stats(echo_pb2.StatsRequest(), timeout=5)
    return dict(reply.calls)


CLIENT = """
import asyncio
from meshlet import Mesh

async def main():
    async with Mesh.from_env() as mesh:
        mesh.channel("echo")

asyncio.run(main())
"""


def test_a_client_without_a_service_name_under_consul_tls_exits_2_with_one_line(procs: Processes, agent: Agent) -> None:
    """The Connect CA issues a leaf per service, a client's too: the README's client, run without a name."""
    env = {"CONSUL_HTTP_ADDR": agent.url, "MESHLET_TLS__SOURCE": "consul", "MESHLET_SERVICE__NAME": ""}
    client = procs.start([sys.executable, "-c", CLIENT], name="nameless-client", env=env)

    assert client.wait(20) == 2, client.output()
    [line] = client.output().strip().splitlines()
    assert "service.name" in line
    assert "MESHLET_SERVICE__NAME" in line
