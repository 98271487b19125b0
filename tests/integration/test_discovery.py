"""Discovery and registration against a real dev agent process: what a caller sees as instances come and go,
as their health changes, and while the agent is away."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from meshlet.config import load_config
from meshlet.discovery.consul_client import consul_factory, go_duration, parse_address
from meshlet.discovery.consul_watch import ConsulWatch
from meshlet.discovery.registration import Registration, RegistrationRefused
from meshlet.endpoints import Endpoint, EndpointSet
from meshlet.errors import NoHealthyEndpoint
from meshlet.events import DiscoveryFailed, Event, EventBus
from meshlet.mesh import Mesh
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.support.agents import Agent, start_dev_agent
from tests.support.processes import Processes, eventually


@dataclass
class RunningAgent:
    """A dev agent process that a test can stop and bring back, empty, on the same port."""

    procs: Processes
    agent: Agent

    @property
    def url(self) -> str:
        return self.agent.url

    def client(self) -> Any:
        return self.agent.client()

    async def stop(self) -> None:
        assert self.agent.child is not None
        await asyncio.to_thread(self.agent.child.stop)

    async def restart_empty(self) -> None:
        self.agent = await asyncio.to_thread(start_dev_agent, self.procs, port=self.agent.port)


@pytest.fixture
def dev_agent(procs: Processes) -> RunningAgent:
    return RunningAgent(procs, start_dev_agent(procs))


@dataclass
class Recorder:
    updates: list[EndpointSet] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def failures(self) -> list[DiscoveryFailed]:
        return [e for e in self.events if isinstance(e, DiscoveryFailed)]


Watching = Callable[..., Awaitable[tuple[ConsulWatch, Recorder]]]


@pytest.fixture
async def watching(dev_agent: RunningAgent) -> AsyncIterator[Watching]:
    """Start watches on the dev agent; every one is stopped when the test ends. Waits are short because the
    dev agent finishes open blocking queries before it exits, and so that unchanged answers occur in a test."""
    started: list[ConsulWatch] = []

    async def watch(service: str, **options: Any) -> tuple[ConsulWatch, Recorder]:
        recorder = Recorder()
        bus = EventBus()
        bus.subscribe(recorder.events.append)
        options.setdefault("backoff_max_s", 0.5)
        options.setdefault("wait_s", 2.0)
        w = ConsulWatch(
            service,
            consul=consul_factory(dev_agent.url),
            on_update=recorder.updates.append,
            events=bus,
            rng=random.Random(1),
            **options,
        )
        started.append(w)
        await w.start()
        return w, recorder

    yield watch
    for w in started:
        await w.stop()


def register_instance(agent: RunningAgent, name: str, service_id: str, port: int, **fields: Any) -> None:
    """Register an instance with a TTL check as any other Consul client would (py-consul, synchronous)."""
    assert agent.client().agent.service.register(
        name, service_id=service_id, port=port, check={"CheckID": f"service:{service_id}", "TTL": "30s"}, **fields
    )


def passing_ids(agent: RunningAgent, service: str) -> set[str]:
    _, nodes = agent.client().health.service(service, passing=True)
    return {n["Service"]["ID"] for n in nodes}


def check_of(agent: RunningAgent, check_id: str) -> dict[str, Any] | None:
    checks: dict[str, dict[str, Any]] = agent.client().agent.checks()
    return checks.get(check_id)


def ids(endpoints: EndpointSet) -> set[str]:
    return {e.instance_id for e in endpoints}


async def test_watch_answers_at_once_with_an_empty_set_for_an_unknown_service(watching: Watching) -> None:
    watch, seen = await watching("nobody-here")
    assert await watch.wait_first_answer(10)
    assert watch.has_answered
    assert seen.updates == [EndpointSet()]


async def test_a_new_instance_appears_once_its_check_passes_and_goes_when_it_fails(
    dev_agent: RunningAgent, watching: Watching
) -> None:
    watch, seen = await watching("web")
    assert await watch.wait_first_answer(10)
    register_instance(
        dev_agent, "web", "web-1", 8081, address="127.0.0.2", tags=["v2"], meta={"zone": "a"}, weights={"Passing": 3}
    )
    await asyncio.sleep(0.3)
    assert len(watch.endpoints) == 0, "a critical instance must not be offered to callers"

    dev_agent.client().agent.check.ttl_pass("service:web-1")
    await eventually(lambda: ids(watch.endpoints) == {"web-1"}, "web-1 to appear")
    (endpoint,) = watch.endpoints
    assert endpoint == Endpoint("127.0.0.2", 8081, weight=3, tags=frozenset({"v2"}))
    assert dict(endpoint.meta) == {"zone": "a"}

    dev_agent.client().agent.check.ttl_fail("service:web-1")
    await eventually(lambda: len(watch.endpoints) == 0, "web-1 to disappear")
    assert [ids(update) for update in seen.updates] == [set(), {"web-1"}, set()]


async def test_an_instance_without_its_own_address_is_dialled_at_its_nodes(
    dev_agent: RunningAgent, watching: Watching
) -> None:
    register_instance(dev_agent, "bare", "bare-1", 9090)
    dev_agent.client().agent.check.ttl_pass("service:bare-1")
    _, nodes = dev_agent.client().health.service("bare", passing=True)
    node_address = nodes[0]["Node"]["Address"]
    watch, _ = await watching("bare")
    await eventually(lambda: len(watch.endpoints) == 1, "bare-1 to appear")
    assert [e.authority for e in watch.endpoints] == [f"{node_address}:9090"]


async def test_a_watch_with_tags_sees_only_instances_carrying_all_of_them(
    dev_agent: RunningAgent, watching: Watching
) -> None:
    for service_id, tags in (("api-1", ["canary", "v2"]), ("api-2", ["v2"]), ("api-3", ["canary"])):
        register_instance(dev_agent, "api", service_id, 7000 + int(service_id[-1]), tags=tags)
        dev_agent.client().agent.check.ttl_pass(f"service:{service_id}")
    watch, _ = await watching("api", tags=frozenset({"canary", "v2"}))
    await eventually(lambda: watch.has_answered and ids(watch.endpoints) == {"api-1"}, "only api-1")


@pytest.mark.slow
async def test_last_good_set_survives_the_agent_stopping_and_the_watch_follows_a_new_agent(
    dev_agent: RunningAgent, watching: Watching
) -> None:
    register_instance(dev_agent, "orders", "orders-1", 6001)
    dev_agent.client().agent.check.ttl_pass("service:orders-1")
    watch, seen = await watching("orders")
    await eventually(lambda: ids(watch.endpoints) == {"orders-1"}, "orders-1 to appear")

    await dev_agent.stop()
    await eventually(lambda: len(seen.failures()) >= 3, "the watch to notice the agent is gone")
    assert ids(watch.endpoints) == {"orders-1"}, "stale beats down: the last good set stays"
    assert all(f.upstream == "orders" and f.retry_in_s <= 0.5 for f in seen.failures())
    assert ids(seen.updates[-1]) == {"orders-1"}

    await dev_agent.restart_empty()
    register_instance(dev_agent, "orders", "orders-2", 6002)
    dev_agent.client().agent.check.ttl_pass("service:orders-2")
    await eventually(lambda: ids(watch.endpoints) == {"orders-2"}, "the watch to follow the new agent")


async def test_a_registered_service_turns_passing_on_its_first_heartbeat(dev_agent: RunningAgent) -> None:
    registration = Registration(
        consul_factory(dev_agent.url),
        name="pay",
        service_id="pay-1",
        address="127.0.0.1",
        port=7001,
        tags=["v1"],
        meta={"version": "1.2.3"},
        check_ttl_s=1.5,
        deregister_after_s=90,
        health=lambda: "SERVING",
    )
    try:
        assert await registration.register()
        await eventually(lambda: passing_ids(dev_agent, "pay") == {"pay-1"}, "pay-1 to pass", blocking=True)
        check = check_of(dev_agent, "service:pay-1")
        assert check is not None
        assert check["Type"] == "ttl"
        assert check["Output"] == "grpc.health.v1 status: SERVING"
        service = dev_agent.client().agent.services()["pay-1"]
        assert (service["Service"], service["Port"], service["Tags"], service["Meta"]) == (
            "pay",
            7001,
            ["v1"],
            {"version": "1.2.3"},
        )
        # The agent may show the pass before our loop has read its answer to the heartbeat (the checks above block it).
        await eventually(
            lambda: registration.last_status == "SERVING", "the heartbeat's answer to be read", blocking=True
        )
    finally:
        await registration.deregister()


async def test_a_service_that_is_not_serving_is_reported_critical_and_leaves_discovery(
    dev_agent: RunningAgent, watching: Watching
) -> None:
    status = {"value": "SERVING"}
    registration = Registration(
        consul_factory(dev_agent.url),
        name="stock",
        service_id="stock-1",
        address="127.0.0.1",
        port=7002,
        check_ttl_s=1.5,
        health=lambda: status["value"],
    )
    watch, _ = await watching("stock")
    try:
        await registration.register()
        await eventually(lambda: ids(watch.endpoints) == {"stock-1"}, "stock-1 to be offered")
        status["value"] = "NOT_SERVING"
        await eventually(lambda: len(watch.endpoints) == 0, "stock-1 to be withdrawn")
        check = await asyncio.to_thread(check_of, dev_agent, "service:stock-1")
        assert check is not None
        assert (check["Status"], check["Output"]) == ("critical", "grpc.health.v1 status: NOT_SERVING")
        status["value"] = "SERVING"
        await eventually(lambda: ids(watch.endpoints) == {"stock-1"}, "stock-1 to come back")
    finally:
        await registration.deregister()


@pytest.mark.slow
async def test_a_registration_comes_back_after_the_agent_restarts_without_state(dev_agent: RunningAgent) -> None:
    registration = Registration(
        consul_factory(dev_agent.url),
        name="cart",
        service_id="cart-1",
        address="127.0.0.1",
        port=7003,
        check_ttl_s=1.5,
        health=lambda: "SERVING",
    )
    try:
        await registration.register()
        await eventually(lambda: passing_ids(dev_agent, "cart") == {"cart-1"}, "cart-1 to pass", blocking=True)
        await dev_agent.stop()
        await asyncio.sleep(1.0)  # a couple of heartbeats fail; none may escape
        await dev_agent.restart_empty()
        await eventually(
            lambda: passing_ids(dev_agent, "cart") == {"cart-1"}, "cart-1 to register again", blocking=True
        )
    finally:
        await registration.deregister()


async def test_deregistering_removes_the_instance_and_its_check(dev_agent: RunningAgent) -> None:
    registration = Registration(
        consul_factory(dev_agent.url),
        name="mail",
        service_id="mail-1",
        address="127.0.0.1",
        port=7004,
        health=lambda: "SERVING",
    )
    await registration.register()
    await eventually(lambda: check_of(dev_agent, "service:mail-1") is not None, "mail-1's check", blocking=True)
    assert await registration.deregister()
    assert "mail-1" not in dev_agent.client().agent.services()
    assert check_of(dev_agent, "service:mail-1") is None


async def test_deregistering_while_the_agent_is_away_does_not_raise(dev_agent: RunningAgent) -> None:
    registration = Registration(
        consul_factory(dev_agent.url),
        name="audit",
        service_id="audit-1",
        address="127.0.0.1",
        port=7005,
        health=lambda: "SERVING",
    )
    await registration.register()
    await dev_agent.stop()
    assert not await registration.deregister()


@pytest.mark.slow
async def test_registering_while_the_agent_is_away_keeps_trying_until_it_is_back(dev_agent: RunningAgent) -> None:
    await dev_agent.stop()
    registration = Registration(
        consul_factory(dev_agent.url),
        name="late",
        service_id="late-1",
        address="127.0.0.1",
        port=7006,
        check_ttl_s=1.5,
        health=lambda: "SERVING",
    )
    try:
        assert not await registration.register()
        await dev_agent.restart_empty()
        await eventually(lambda: passing_ids(dev_agent, "late") == {"late-1"}, "late-1 to register", blocking=True)
    finally:
        await registration.deregister()


async def test_a_definition_the_agent_rejects_is_refused_with_the_agents_reason(dev_agent: RunningAgent) -> None:
    registration = Registration(
        consul_factory(dev_agent.url),
        name="bad",
        service_id="bad-1",
        address="127.0.0.1",
        port=7007,
        weight=0,
        health=lambda: "SERVING",
    )
    with pytest.raises(RegistrationRefused, match="Passing must be greater than 0"):
        await registration.register()
    await registration.deregister()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("http://127.0.0.1:8500", ("http", "127.0.0.1", 8500)),
        ("127.0.0.1:9500", ("http", "127.0.0.1", 9500)),
        ("https://consul.internal", ("https", "consul.internal", 8501)),
        ("consul.internal", ("http", "consul.internal", 8500)),
    ],
)
def test_consul_address_takes_the_forms_consul_http_addr_takes(address: str, expected: tuple[str, str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["ftp://127.0.0.1:8500", "http://:8500", "http://127.0.0.1:99999"])
def test_a_bad_consul_address_is_refused_saying_what_is_expected(address: str) -> None:
    with pytest.raises(ValueError, match="invalid Consul address"):
        parse_address(address)


def test_durations_are_sent_in_gos_notation() -> None:
    assert [go_duration(s) for s in (30.0, 1.5, 60)] == ["30s", "1500ms", "60s"]


async def test_a_call_with_no_passing_instance_names_the_instances_consul_knows_and_their_check_output(
    dev_agent: RunningAgent,
) -> None:
    """Not "check the service's health checks": which instances, which check, and what it said."""
    register_instance(dev_agent, "ledger", "ledger-1", 7101, address="127.0.0.1")
    register_instance(dev_agent, "ledger", "ledger-2", 7102, address="127.0.0.1")
    dev_agent.client().agent.check.ttl_fail("service:ledger-1", notes="grpc.health.v1 status: NOT_SERVING")
    config = load_config(None, env={"CONSUL_HTTP_ADDR": dev_agent.url})
    async with Mesh(config) as mesh:
        with pytest.raises(NoHealthyEndpoint) as refused:
            await echo_pb2_grpc.EchoStub(mesh.channel("ledger")).Echo(echo_pb2.EchoRequest(), timeout=5)

    details = refused.value.details() or ""
    assert "no healthy instance of ledger: Consul lists no passing instance; Consul knows 2 instances of ledger" in (
        details
    )
    assert "ledger-1 at 127.0.0.1:7101 critical (" in details
    assert "grpc.health.v1 status: NOT_SERVING" in details
    assert "ledger-2 at 127.0.0.1:7102 critical (" in details, "a TTL check never heart-beaten is critical too"
    assert "/ready" in details
