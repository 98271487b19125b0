"""The rig every pipeline test stands on: one upstream, "inventory", built as Mesh builds it (Upstream, its
outbound pipeline, a MeshChannel over it) but on a fake clock, a seeded rng, a sleep that only advances the
clock, and the scripted transport in place of the network."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import grpc
import pytest
from google.rpc.error_details_pb2 import ErrorInfo

from meshlet.call import matches_any
from meshlet.config import UpstreamPolicy
from meshlet.deadline import HANDLER_DEADLINE, Deadline
from meshlet.endpoints import Endpoint, EndpointSet
from meshlet.errors import error_info
from meshlet.events import Event, EventBus
from meshlet.outbound.send import ExplainFailure
from meshlet.transport.mesh_channel import MeshChannel
from meshlet.upstream import Upstream
from tests.pipeline.scripted import Attempt, ScriptedChannels

SERVICE = "inventory"
GET = "/shop.inventory.v1.Inventory/GetStock"  # idempotent, by the rig's retry.idempotent
RESERVE = "/shop.inventory.v1.Inventory/Reserve"  # not idempotent: a reservation made twice is two reservations
WATCH = "/shop.inventory.v1.Inventory/WatchStock"  # idempotent response stream
UPLOAD = "/shop.inventory.v1.Inventory/Restock"  # idempotent client stream
IDEMPOTENT = (GET, WATCH, UPLOAD)

A, B, C, D, E = (Endpoint("127.0.0.1", port) for port in range(5001, 5006))

E_ = TypeVar("E_", bound=Event)


class FakeClock:
    """Monotonic seconds that move only when a test (or the rig's sleep) says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def policy(**settings: Any) -> UpstreamPolicy:
    """The rig's policy: the defaults, GET/WATCH/UPLOAD declared idempotent, then `settings` (YAML's shape)."""
    retry = {"idempotent": list(IDEMPOTENT), **settings.pop("retry", {})}
    return UpstreamPolicy.model_validate({"retry": retry, **settings})


class Rig:
    def __init__(
        self, upstream_policy: UpstreamPolicy, seed: int, explain_failure: ExplainFailure | None = None
    ) -> None:
        self.clock = FakeClock()
        self.sleeps: list[float] = []
        self.events: list[Event] = []
        self.transport = ScriptedChannels()
        bus = EventBus()
        bus.subscribe(self.events.append)
        self.upstream = Upstream(
            SERVICE,
            upstream_policy,
            channels=self.transport,
            events=bus,
            clock=self.clock,
            rng=random.Random(seed),
            sleep=self._sleep,
            explain_failure=explain_failure,
        )
        patterns = upstream_policy.retry.idempotent
        self.channel = MeshChannel(
            SERVICE,
            self.upstream.handler,
            is_idempotent=lambda path: matches_any(path, patterns),
            replay_limit_bytes=upstream_policy.retry.replay_buffer_bytes,
        )

    async def _sleep(self, delay_s: float) -> None:
        """The retry stage's backoff: recorded, and time passes at once."""
        self.sleeps.append(delay_s)
        self.clock.advance(delay_s)

    def serve(self, *endpoints: Endpoint) -> None:
        """Discovery answers: these instances are passing."""
        self.upstream.update_endpoints(EndpointSet(endpoints))

    @property
    def attempts(self) -> list[Attempt]:
        return self.transport.attempts

    def events_of(self, kind: type[E_]) -> list[E_]:
        return [event for event in self.events if isinstance(event, kind)]

    async def unary(self, method: str = GET, request: Any = b"request", **kwargs: Any) -> Any:
        """A unary call as a generated stub makes it."""
        return await self.channel.unary_unary(method)(request, **kwargs)

    async def failing(self, method: str = GET, **kwargs: Any) -> grpc.aio.AioRpcError:
        """A unary call that must fail: its error, as the caller catches it."""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.unary(method, **kwargs)
        return caught.value

    def __repr__(self) -> str:
        return f"<Rig {self.upstream!r} {self.transport!r} at t={self.clock.now:g}>"


MakeRig = Callable[..., Rig]


@pytest.fixture
async def make_rig() -> AsyncIterator[MakeRig]:
    """``make_rig(seed=7, upstream_policy=None, explain_failure=None, **settings)``: a Rig; closed (timers
    cancelled) after the test."""
    rigs: list[Rig] = []

    def make(
        seed: int = 7,
        upstream_policy: UpstreamPolicy | None = None,
        explain_failure: ExplainFailure | None = None,
        **settings: Any,
    ) -> Rig:
        rig = Rig(upstream_policy or policy(**settings), seed, explain_failure)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        await rig.upstream.close()


@pytest.fixture
def rig(make_rig: MakeRig) -> Rig:
    """The default rig, with three passing instances."""
    made = make_rig()
    made.serve(A, B, C)
    return made


@contextlib.contextmanager
def handler_deadline(clock: FakeClock, seconds: float) -> Iterator[Deadline]:
    """Run as code inside a server handler whose own deadline is `seconds` away (what inbound sets)."""
    deadline = Deadline.after(seconds, clock)
    token = HANDLER_DEADLINE.set(deadline)
    try:
        yield deadline
    finally:
        HANDLER_DEADLINE.reset(token)


def info_of(error: grpc.aio.AioRpcError) -> ErrorInfo:
    """meshlet's ErrorInfo (reason and metadata) from a failed call; fails the test if meshlet did not make it."""
    info = error_info(error)
    assert info is not None, f"not an error meshlet produced: {error!r}"
    return info


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Let other tasks run until `predicate` holds; a bounded number of loop turns, no wall-clock wait."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")
