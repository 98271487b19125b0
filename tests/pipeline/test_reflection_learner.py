"""Learning method kinds from a real grpc.aio server's reflection service on loopback, and asking again on a
schedule when a server has none (the clock is a fake one: nothing here sleeps)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from meshlet.call import Cardinality
from meshlet_sidecar.method_kinds import AskSchedule, MethodInfo, MethodTable
from meshlet_sidecar.reflection import ReflectionLearner, ask_methods
from tests.support.plain_app import plain_app
from tests.support.processes import free_port

ECHO = "/meshlet_api.echo.v1.Echo"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def with_reflection() -> AsyncIterator[grpc.aio.Channel]:
    async with plain_app(with_reflection=True) as app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        yield ch


@pytest.fixture
async def without_reflection() -> AsyncIterator[grpc.aio.Channel]:
    async with plain_app() as app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        yield ch


async def test_reflection_tells_every_method_its_kind_and_idempotency(with_reflection: grpc.aio.Channel) -> None:
    methods = await ask_methods(with_reflection)
    assert methods[f"{ECHO}/Echo"] == MethodInfo(Cardinality.UNARY_UNARY, idempotent=True)
    assert methods[f"{ECHO}/EchoOnce"] == MethodInfo(Cardinality.UNARY_UNARY, idempotent=False)
    assert methods[f"{ECHO}/BidiStream"].kind is Cardinality.STREAM_STREAM
    assert "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" in methods  # it describes itself too


async def test_a_server_without_reflection_answers_unimplemented(without_reflection: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await ask_methods(without_reflection)
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_miss_makes_the_learner_ask_and_the_table_learn(with_reflection: grpc.aio.Channel) -> None:
    table, clock = MethodTable(), Clock()
    learner = ReflectionLearner("app", table, lambda: with_reflection, clock=clock)
    table.missed(f"{ECHO}/Echo")  # what RawMethods does for a call of unknown kind
    await learner.wait_answer()
    assert table.get(f"{ECHO}/Echo") == MethodInfo(Cardinality.UNARY_UNARY, idempotent=True)
    assert table.version == 1
    await learner.close()


async def test_a_server_without_reflection_is_asked_again_only_after_the_refusal_interval(
    without_reflection: grpc.aio.Channel,
) -> None:
    table, clock, asked = MethodTable(), Clock(), list[float]()

    def channel() -> grpc.aio.Channel:
        asked.append(clock.now)
        return without_reflection

    learner = ReflectionLearner("app", table, channel, clock=clock, schedule=AskSchedule(refused_s=300.0))
    learner.ask()
    await learner.wait_answer()  # UNIMPLEMENTED: a definite no
    for _ in range(3):
        clock.now += 60.0
        table.missed(f"{ECHO}/Echo")  # calls of unknown kind keep coming: none asks again before 300 s
        await learner.wait_answer()
    clock.now += 120.0
    table.missed(f"{ECHO}/Echo")
    await learner.wait_answer()
    assert asked == [1000.0, 1300.0]
    assert len(table) == 0
    await learner.close()


async def test_an_unreachable_source_is_asked_again_with_a_doubling_backoff() -> None:
    table, clock, asked = MethodTable(), Clock(), list[float]()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as nowhere:  # nothing listens there

        def channel() -> grpc.aio.Channel:
            asked.append(clock.now)
            return nowhere

        learner = ReflectionLearner("upstream", table, channel, clock=clock)
        learner.ask()
        await learner.wait_answer()
        table.missed(f"{ECHO}/Echo")  # at once: within the first backoff (1 s), nothing is asked
        await learner.wait_answer()
        clock.now += 1.0
        table.missed(f"{ECHO}/Echo")
        await learner.wait_answer()
        clock.now += 1.0  # the second backoff is 2 s
        table.missed(f"{ECHO}/Echo")
        await learner.wait_answer()
        assert asked == [1000.0, 1001.0]
        await learner.close()
