"""The real inbound stages, as build_inbound orders them, over a scripted handler: what a caller sees when it
has no certificate, is denied by an intention, or is over its rate limit, and what the operator's log shows.
No sockets, no sleeps: calls are InboundCall objects as the server adapter builds them, time is a fake clock."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest

from meshlet.call import InboundCall
from meshlet.config import load_config
from meshlet.deadline import HANDLER_DEADLINE, Deadline
from meshlet.errors import PUSHBACK_KEY, ConfigError, MeshError, error_info
from meshlet.inbound import InboundParts, build_inbound, inbound_stages
from meshlet.inbound.authorize import Authorize
from meshlet.inbound.deadline import ExposeDeadline
from meshlet.inbound.identify import IdentifyPeer
from meshlet.inbound.observe import CountRefusals, ObserveInbound
from meshlet.inbound.rate_limit import RateLimitCaller
from meshlet.security.consul_authz import ConsulAuthorizer
from meshlet.security.intentions import Decision
from tests.support.processes import eventually

CREATE = "/shop.orders.v1.Orders/Create"
LIST = "/shop.orders.v1.Orders/List"
GATEWAY = "spiffe://meshlet.local/ns/default/dc/dc1/svc/gateway"
BILLING = "spiffe://meshlet.local/ns/default/dc/dc1/svc/billing"
GATEWAY_MAY_CALL_ORDERS = {
    "source": "local",
    "default": "deny",
    "rules": [{"from": "gateway", "to": "orders", "action": "allow"}],
}


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def no_consul() -> Any:
    raise AssertionError("these tests never talk to Consul")


class Server:
    """One method's inbound pipeline, built from a config as the SDK builds it, over a handler that records."""

    def __init__(self, **config: Any) -> None:
        self.clock = FakeClock()
        self.handled: list[InboundCall] = []
        self.parts = InboundParts.from_config(
            load_config(env={}, overrides={"service.name": "orders", **config}), consul=no_consul, clock=self.clock
        )
        self.pipeline = build_inbound(self._handler, self.parts)

    async def _handler(self, call: InboundCall) -> Any:
        self.handled.append(call)
        return HANDLER_DEADLINE.get()

    async def call(
        self, peer_uri: str | None = GATEWAY, method: str = CREATE, peer_address: str = "ipv4:10.0.0.7:53122"
    ) -> Any:
        deadline = Deadline.after(2.0, self.clock)
        return await self.pipeline(InboundCall(method, (), b"request", None, deadline, peer_uri, peer_address))

    async def refused(self, *args: Any, **kwargs: Any) -> MeshError:
        before = len(self.handled)
        with pytest.raises(MeshError) as caught:
            await self.call(*args, **kwargs)
        assert len(self.handled) == before, "a refused call must never reach the handler"
        return caught.value


def reason_of(error: MeshError) -> str:
    info = error_info(error)
    assert info is not None
    return str(info.reason)


def pushback_ms(error: MeshError) -> int:
    return int(dict(error.trailing_metadata() or ())[PUSHBACK_KEY])


# ---------------------------------------------------------------- which stages run


def test_a_server_with_nothing_configured_only_exposes_the_deadline() -> None:
    server = Server(**{"telemetry.access_log": False})
    assert [type(stage) for stage in inbound_stages(server.parts)] == [ExposeDeadline]


def test_every_feature_on_gives_the_stages_in_request_order() -> None:
    server = Server(
        **{
            "tls.source": "consul",
            "authz.default": "deny",
            "rate_limit.per_caller.rate_per_s": 1,
            "telemetry.access_log": True,
        }
    )
    assert [type(stage) for stage in inbound_stages(server.parts)] == [
        CountRefusals,
        IdentifyPeer,
        Authorize,
        RateLimitCaller,
        ObserveInbound,
        ExposeDeadline,
    ]


def test_authz_that_allows_everything_adds_no_stage() -> None:
    assert Server(authz={"default": "allow"}).parts.authorizer is None


def test_intentions_without_a_service_name_are_a_config_error() -> None:
    config = load_config(env={}, overrides={"authz": GATEWAY_MAY_CALL_ORDERS})
    with pytest.raises(ConfigError) as caught:
        InboundParts.from_config(config, consul=no_consul, clock=FakeClock())
    assert caught.value.path == "service.name"


async def test_consul_intentions_build_an_authorizer_that_asks_the_agent_only_when_called() -> None:
    parts = InboundParts.from_config(
        load_config(env={}, overrides={"service.name": "orders", "authz.source": "consul"}),
        consul=no_consul,
        clock=FakeClock(),
    )
    assert isinstance(parts.authorizer, ConsulAuthorizer)
    await parts.close()


def test_certificates_from_consul_make_consul_intentions_the_authorization_and_the_start_log_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="meshlet.inbound")
    parts = InboundParts.from_config(
        load_config(env={}, overrides={"service.name": "orders", "tls.source": "consul"}),
        consul=no_consul,
        clock=FakeClock(),
    )
    assert isinstance(parts.authorizer, ConsulAuthorizer)
    [said] = [r for r in caplog.records if getattr(r, "event", None) == "authz_effective"]
    assert said.getMessage().startswith("authorization for orders: source consul (not set: the default with tls")
    assert (said.__dict__["authz_source"], said.__dict__["authz_default"]) == ("consul", "allow")


def test_a_server_that_allows_everyone_says_so_at_start(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meshlet.inbound")
    InboundParts.from_config(load_config(env={}), consul=no_consul, clock=FakeClock())
    [said] = [r for r in caplog.records if getattr(r, "event", None) == "authz_effective"]
    assert "source local, no rules, default allow: every caller is allowed" in said.getMessage()


# ---------------------------------------------------------------- identity


async def test_an_allowed_call_reaches_the_handler_with_its_deadline_exposed() -> None:
    server = Server(**{"tls.source": "consul"}, authz=GATEWAY_MAY_CALL_ORDERS)
    deadline_seen = await server.call(GATEWAY)
    assert [call.peer_uri for call in server.handled] == [GATEWAY]
    assert deadline_seen.remaining() == pytest.approx(2.0)


async def test_a_call_without_a_client_certificate_on_an_mtls_port_is_unauthenticated() -> None:
    error = await Server(**{"tls.source": "consul"}).refused(peer_uri=None)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(error) == "UNAUTHENTICATED"
    assert "ipv4:10.0.0.7:53122" in (error.details() or "")
    assert "meshlet certs issue" in (error.details() or "")


async def test_a_certificate_that_names_no_service_is_unauthenticated() -> None:
    error = await Server(**{"tls.source": "consul"}).refused(peer_uri="spiffe://meshlet.local/agent/client/dc/dc1")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "does not name a service" in (error.details() or "")


async def test_without_mtls_a_call_without_identity_is_not_refused_for_it() -> None:
    server = Server()
    await server.call(peer_uri=None)
    assert len(server.handled) == 1


# ---------------------------------------------------------------- authorization


async def test_a_denied_caller_gets_permission_denied_naming_caller_and_target() -> None:
    error = await Server(**{"tls.source": "consul"}, authz=GATEWAY_MAY_CALL_ORDERS).refused(BILLING)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    details = error.details() or ""
    assert details.startswith(f"caller 'billing' ({BILLING}) may not call {CREATE} on orders: ")
    assert "authz.default is deny" in details
    assert "{from: billing, to: orders" in details  # what to add to allow it
    info = error_info(error)
    assert info is not None
    assert (info.reason, dict(info.metadata)) == (
        "INTENTION_DENIED",
        {"caller": BILLING, "target": "orders", "method": CREATE},
    )


async def test_a_method_rule_denies_one_method_of_an_allowed_pair() -> None:
    authz = {
        "rules": [
            {"from": "gateway", "to": "orders", "action": "allow"},
            {"from": "gateway", "to": "orders", "methods": [CREATE], "action": "deny"},
        ]
    }
    server = Server(authz=authz)
    await server.call(GATEWAY, LIST)
    error = await server.refused(GATEWAY, CREATE)
    assert f"matched intention gateway -> orders [{CREATE}] (deny)" in (error.details() or "")


async def test_a_denied_caller_is_logged_at_once_and_its_repeats_in_one_line_per_window(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("meshlet.inbound.authorize.DENIAL_WINDOW_S", 0.2)
    server = Server(authz=GATEWAY_MAY_CALL_ORDERS)
    with caplog.at_level(logging.WARNING, logger="meshlet.inbound.authorize"):
        for _ in range(3):
            await server.refused(BILLING)
        await server.refused(BILLING, LIST)
        await server.call(GATEWAY)

        def denials() -> list[Any]:
            return [record for record in caplog.records if getattr(record, "event", None) == "authz_denied"]

        assert [(record.method, record.count) for record in denials()] == [(CREATE, 1), (LIST, 1)]  # at once
        await eventually(lambda: len(denials()) == 3, "the window's line of the repeated denials", timeout_s=10)
    record: Any = denials()[0]
    assert (record.caller, record.caller_service, record.target, record.method) == (
        BILLING,
        "billing",
        "orders",
        CREATE,
    )
    assert record.peer_address == "ipv4:10.0.0.7:53122"
    assert (denials()[2].method, denials()[2].count) == (CREATE, 2)  # the window's other two, in one line
    assert "(x2 in the last 0.2s)" in denials()[2].getMessage()


async def test_a_caller_the_authorizer_must_first_ask_about_waits_once_then_is_answered_from_memory() -> None:
    class AskingAuthorizer:
        def __init__(self) -> None:
            self.known: dict[str | None, Decision] = {}
            self.asked: list[str | None] = []

        def decide_now(self, peer_uri: str | None, destination: str, method: str) -> Decision | None:
            return self.known.get(peer_uri)

        async def decide(self, peer_uri: str | None, destination: str, method: str) -> Decision:
            self.asked.append(peer_uri)
            await asyncio.sleep(0)
            decision = self.known[peer_uri] = Decision(peer_uri == GATEWAY, "asked elsewhere")
            return decision

        def remedy(self, source: str, destination: str, method: str) -> str:
            return "ask elsewhere"

    server = Server()
    authorizer = AskingAuthorizer()
    server.pipeline = build_inbound(server._handler, InboundParts(service="orders", authorizer=authorizer))
    for _ in range(3):
        await server.call(GATEWAY)
        await server.refused(BILLING)
    assert authorizer.asked == [GATEWAY, BILLING]
    assert len(server.handled) == 3


# ---------------------------------------------------------------- rate limits


async def test_a_caller_over_its_limit_gets_resource_exhausted_with_the_time_to_wait() -> None:
    server = Server(**{"rate_limit.per_caller": {"rate_per_s": 3, "burst": 2}})
    await server.call(GATEWAY)
    await server.call(GATEWAY)
    error = await server.refused(GATEWAY)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(error) == "RATE_LIMITED"
    assert pushback_ms(error) == 334  # a third of a second, rounded up: retrying sooner would be refused again
    assert "retry after 334 ms" in (error.details() or "")
    server.clock.advance(0.334)
    await server.call(GATEWAY)


async def test_a_pushback_longer_than_the_callers_deadline_says_so_instead_of_promising_a_wait() -> None:
    server = Server(**{"rate_limit.per_caller": {"rate_per_s": 0.1, "burst": 1}})
    await server.call(GATEWAY)
    error = await server.refused(GATEWAY)
    assert pushback_ms(error) == 10_000
    details = error.details() or ""
    assert "retry after 10000 ms (longer than the 2000 ms left before the call's deadline" in details
    assert "wait for this pushback by themselves" not in details


async def test_a_pushback_within_the_callers_deadline_says_meshlet_clients_wait_it_out() -> None:
    server = Server(**{"rate_limit.per_caller": {"rate_per_s": 1, "burst": 1}})
    await server.call(GATEWAY)
    error = await server.refused(GATEWAY)
    assert "meshlet clients wait for this pushback by themselves" in (error.details() or "")


async def test_one_callers_excess_does_not_limit_another_caller() -> None:
    server = Server(**{"rate_limit.per_caller": {"rate_per_s": 1}})
    await server.call(GATEWAY)
    await server.refused(GATEWAY)
    await server.call(BILLING)


async def test_a_denied_caller_spends_no_tokens() -> None:
    server = Server(authz=GATEWAY_MAY_CALL_ORDERS, **{"rate_limit.per_caller": {"rate_per_s": 1}})
    for _ in range(5):
        error = await server.refused(BILLING)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    await server.call(GATEWAY)


async def test_a_per_method_limit_applies_per_caller_per_method() -> None:
    server = Server(**{"rate_limit.per_method": {"/shop.orders.v1.Orders/*": {"rate_per_s": 1}}})
    await server.call(GATEWAY, CREATE)
    await server.call(GATEWAY, LIST)
    await server.call(BILLING, CREATE)
    error = await server.refused(GATEWAY, CREATE)
    assert "rate_limit.per_method" in (error.details() or "")
    await server.call(GATEWAY, "/grpc.health.v1.Health/Check")  # no pattern matches: not limited


async def test_a_call_refused_by_its_method_limit_spends_none_of_the_callers_overall_tokens() -> None:
    server = Server(
        **{
            "rate_limit.per_caller": {"rate_per_s": 1, "burst": 2},
            "rate_limit.per_method": {CREATE: {"rate_per_s": 1}},
        }
    )
    await server.call(GATEWAY, CREATE)
    for _ in range(5):
        await server.refused(GATEWAY, CREATE)
    await server.call(GATEWAY, LIST)


async def test_without_mtls_a_caller_is_its_host_whatever_its_port() -> None:
    server = Server(**{"rate_limit.per_caller": {"rate_per_s": 1}})
    await server.call(None, peer_address="ipv4:10.0.0.7:40001")
    error = await server.refused(None, peer_address="ipv4:10.0.0.7:40002")
    assert "caller ipv4:10.0.0.7 " in (error.details() or "")
    await server.call(None, peer_address="ipv4:10.0.0.8:40001")
