"""What callers see when the network misbehaves, counted at the servers: two or three echo instances, each in its
own namespace, called at a fixed rate through the SDK while one instance's link (or the agent's) is degraded.
Idempotent calls (Echo) must not be lost; a non-idempotent one (EchoOnce) must never run twice. Each test adds a
row to the table the suite prints; timings are printed, never asserted."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from meshlet.endpoints import Endpoint
from meshlet.events import BreakerOpened, EndpointsChanged, Event
from meshlet.mesh import Mesh
from meshlet.transport.channels import KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS, EndpointChannels
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.faults import netfaults
from tests.faults.conftest import ECHO_PORT, Cluster
from tests.faults.tally import ROWS, Load, Row, executions, row
from tests.k8s.netns import Pod
from tests.support.processes import eventually

pytestmark = pytest.mark.slow

WAIT_S = 40.0  # bounds on waiting for what must happen, never timing assertions
OUTAGE_S = 30  # as long as the issue asks: longer than every TTL and retry backoff involved


def echo(mesh: Mesh, service: str, method: str = "Echo") -> Load:
    stub = echo_pb2_grpc.EchoStub(mesh.channel(service))
    invoke = getattr(stub, method)

    async def call(request: echo_pb2.EchoRequest, deadline_s: float) -> echo_pb2.EchoReply:
        reply: echo_pb2.EchoReply = await invoke(request, timeout=deadline_s)
        return reply

    return Load(call, prefix=method)


async def warm(load: Load, cluster: Cluster, names: tuple[str, ...]) -> None:
    """Call until every instance in `names` has served: the caller has a connection to each."""

    def served() -> bool:
        lines = cluster.log.read_text().splitlines()
        return all(any(line.startswith(f"{name} ") for line in lines) for name in names)

    async def once() -> bool:
        await load.run_for(0.2)
        return served()

    await eventually(once, f"{names} to serve the caller", WAIT_S)
    load.outcomes.clear()


def served_by(cluster: Cluster, name: str) -> int:
    return sum(1 for line in cluster.log.read_text().splitlines() if line.startswith(f"{name} "))


async def serves_again(load: Load, cluster: Cluster, name: str, served_before: int, what: str) -> None:
    """Keep calling until `name` has served more than `served_before` calls."""

    async def served() -> bool:
        await load.run_for(0.5)
        return served_by(cluster, name) > served_before

    await eventually(served, what, 60.0)


async def read_to_end(stream: grpc.aio.UnaryStreamCall) -> None:
    while (await stream.read()) is not grpc.aio.EOF:
        pass


def report(made: Row) -> Row:
    ROWS.append(made)
    return made


class Ejection:
    """When the caller stopped sending new calls to `pod`: its breaker opened or discovery dropped it."""

    def __init__(self, mesh: Mesh, pod: Pod) -> None:
        self.pod = pod
        self.at: float | None = None
        self.why = ""
        mesh.events.subscribe(self.on_event)

    def on_event(self, event: Event) -> None:
        if self.at is not None:
            return
        if isinstance(event, BreakerOpened) and event.endpoint.address == self.pod.ip:
            self.at, self.why = time.monotonic(), "breaker opened"
        elif isinstance(event, EndpointsChanged) and any(e.address == self.pod.ip for e in event.removed):
            self.at, self.why = time.monotonic(), "left discovery"


async def test_latency_with_jitter_on_one_instance(cluster: Cluster, caller: Mesh) -> None:
    slow = cluster.start("a")
    cluster.start("b")
    reason = netfaults.netem_unavailable(slow)
    if reason is not None:
        pytest.skip(f"+50 ms latency: {reason}")
    load = echo(caller, cluster.service)
    await warm(load, cluster, ("a", "b"))
    netfaults.delay(slow, 50, 20)
    before = served_by(cluster, "a")
    await load.run_for(10)
    note = f"{served_by(cluster, 'a') - before} served by the slow instance"
    made = report(row("+50 ms ± 20 ms on 1 of 2", load, executions(cluster.log, "Echo"), idempotent=True, note=note))
    assert made.lost == 0


@pytest.mark.parametrize("percent", [5, 30])
async def test_packet_loss_on_one_instance(cluster: Cluster, caller: Mesh, percent: int) -> None:
    lossy = cluster.start("a")
    cluster.start("b")
    load = echo(caller, cluster.service)
    await warm(load, cluster, ("a", "b"))
    netfaults.loss(lossy, percent, peer=cluster.network.host_ip)
    before = served_by(cluster, "a")
    await load.run_for(10)
    note = f"{served_by(cluster, 'a') - before} served by the lossy instance"
    fault = f"{percent} % loss each way, 1 of 2"
    made = report(row(fault, load, executions(cluster.log, "Echo"), idempotent=True, note=note))
    if percent <= 5:  # to outlast a 5 s deadline, one segment must be lost ~5 times in a row (TCP doubles its RTO)
        assert made.lost == 0
    else:  # TCP's backoff can outlast a deadline here; nothing else may fail a call
        assert {o.code for o in load.outcomes} <= {"OK", "DEADLINE_EXCEEDED"}


async def test_partition_of_one_instance_for_10s_then_healed(cluster: Cluster, caller: Mesh) -> None:
    cut = cluster.start("a")
    cluster.start("b")
    load = echo(caller, cluster.service)
    await warm(load, cluster, ("a", "b"))
    ejection = Ejection(caller, cut)
    running = asyncio.create_task(load.run_for(20))
    await asyncio.sleep(3)
    netfaults.black_hole(cut)  # from everything: the caller and the agent
    cut_at = time.monotonic()
    await asyncio.sleep(10)
    netfaults.heal(cut)
    served_before = served_by(cluster, "a")
    await running
    assert ejection.at is not None, "the partitioned instance was never taken out of rotation"
    stranded = len(load.failed_after(0)) - len(load.failed_after(ejection.at))
    note = f"{ejection.why} {ejection.at - cut_at:.1f} s in; {stranded} calls in flight on it failed"
    made = report(
        row("partition of 1 of 2 for 10 s", load, executions(cluster.log, "Echo"), idempotent=True, note=note)
    )
    assert load.failed_after(ejection.at) == [], "calls started after the ejection failed"
    assert made.calls > 0
    await serves_again(load, cluster, "a", served_before, "the healed instance to serve again")


async def test_black_hole_is_detected_by_keepalive_and_ejected(cluster: Cluster, caller: Mesh) -> None:
    hole = cluster.start("a")
    cluster.start("b")
    load = echo(caller, cluster.service)
    await warm(load, cluster, ("a", "b"))
    ejection = Ejection(caller, hole)
    # A watch on a meshlet channel straight to `a`: it fails when keepalive declares the connection dead.
    channels = EndpointChannels()
    watch_stub = echo_pb2_grpc.EchoStub(channels.get(Endpoint(hole.ip, ECHO_PORT)).channel)
    watch = watch_stub.ServerStream(echo_pb2.EchoRequest(message="w"), metadata=(("x-echo-stream-every-ms", "100"),))
    assert (await watch.read()) is not grpc.aio.EOF
    running = asyncio.create_task(load.run_for(15))
    await asyncio.sleep(2)
    netfaults.black_hole(hole, peer=cluster.network.host_ip)  # from the caller; the agent still sees it healthy
    holed_at = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await read_to_end(watch)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
    detected_s = time.monotonic() - holed_at
    await running
    await channels.close()
    assert ejection.at is not None, "the black-holed instance was never ejected"
    ejected_s = ejection.at - holed_at
    print(f"\nblack hole: keepalive ({KEEPALIVE_TIME_MS} + {KEEPALIVE_TIMEOUT_MS} ms) detected the dead connection "
          f"after {detected_s:.1f} s; {ejection.why} after {ejected_s:.1f} s")  # fmt: skip
    stranded = len(load.failed_after(0)) - len(load.failed_after(ejection.at))
    note = f"dead connection detected in {detected_s:.1f} s, {ejection.why} in {ejected_s:.1f} s; {stranded} failed"
    report(row("black hole on 1 of 2", load, executions(cluster.log, "Echo"), idempotent=True, note=note))
    assert all(o.code in ("OK", "DEADLINE_EXCEEDED", "UNAVAILABLE") for o in load.outcomes)
    assert load.failed_after(ejection.at) == [], "calls started after the ejection failed"


async def test_agent_unreachable_while_an_instance_dies_and_another_starts(cluster: Cluster, caller: Mesh) -> None:
    cluster.start("a")
    cluster.start("b")
    load = echo(caller, cluster.service)
    await warm(load, cluster, ("a", "b"))
    running = asyncio.create_task(load.run_for(OUTAGE_S + 8))
    await asyncio.sleep(2)
    netfaults.black_hole(cluster.agent_pod)
    await asyncio.sleep(2)
    cluster.child("a").signal(9)
    cluster.start("c", wait=False)
    await asyncio.sleep(OUTAGE_S - 2)
    netfaults.heal(cluster.agent_pod)
    await running
    made = report(
        row(
            f"agent unreachable {OUTAGE_S} s, 1 killed, 1 started",
            load,
            executions(cluster.log, "Echo"),
            idempotent=True,
        )
    )
    assert made.lost == 0

    await serves_again(load, cluster, "c", 0, "the instance started during the outage to serve")


async def test_one_way_partition_never_runs_a_non_idempotent_call_twice(cluster: Cluster, caller: Mesh) -> None:
    mute = cluster.start("a")
    cluster.start("b")
    load = echo(caller, cluster.service, "EchoOnce")
    load.deadline_s = 3.0
    await warm(load, cluster, ("a", "b"))
    netfaults.replies_lost(mute, peer=cluster.network.host_ip)  # requests arrive, replies never leave
    await load.run_for(12)
    netfaults.heal(mute)
    executed = executions(cluster.log, "EchoOnce")
    failed = [o for o in load.outcomes if o.code != "OK"]
    ran_anyway = sum(1 for o in failed if executed[o.message] == 1)
    note = f"{len(failed)} failed at the caller, {ran_anyway} of them executed once (their replies lost)"
    made = report(row("one-way partition, non-idempotent", load, executed, idempotent=False, note=note))
    assert failed, "no call met the partition: the fault was not in effect"
    assert made.duplicated == 0
    assert max(executed.values()) == 1
