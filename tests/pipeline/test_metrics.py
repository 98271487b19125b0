"""The observe stages over the scripted transport: what the metrics say after calls a test made, and the access
log line of a call. Outbound through the real pipeline (Upstream, MeshChannel); inbound through build_inbound
with the stages the config asks for. Values are read from the registry as Prometheus would scrape them."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from meshlet.call import InboundCall, matches_any
from meshlet.config import load_config
from meshlet.deadline import Deadline
from meshlet.errors import MeshError
from meshlet.events import EventBus
from meshlet.inbound import InboundParts, build_inbound
from meshlet.outbound.observe import ObserveCall
from meshlet.outbound.send import ExplainFailure
from meshlet.telemetry.access_log import ACCESS_LOGGER, AccessLog
from meshlet.telemetry.logging import JsonFormatter
from meshlet.telemetry.metrics import MAX_METHODS, OTHER_METHOD, Metrics
from meshlet.transport.mesh_channel import MeshChannel
from meshlet.upstream import Upstream
from tests.pipeline.conftest import GET, RESERVE, SERVICE, WATCH, A, B, C, FakeClock, Rig, policy
from tests.pipeline.scripted import HandshakesFail, Stream, failure, refused, unavailable

OUT = {"direction": "outbound", "service": SERVICE}
GET_LABEL = GET[1:]
WATCH_LABEL = WATCH[1:]


class MeteredRig(Rig):
    """The pipeline rig with metrics (and, when asked, the access log) on, as Mesh builds them."""

    def __init__(
        self,
        seed: int = 7,
        access_log: AccessLog | None = None,
        explain_failure: ExplainFailure | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(policy(**settings), seed)
        self.metrics = Metrics()
        bus = EventBus()
        bus.subscribe(self.events.append)
        self.metrics.watch(bus)
        self.plain = self.upstream
        self.upstream = Upstream(
            SERVICE,
            self.upstream.policy,
            channels=self.transport,
            events=bus,
            clock=self.clock,
            rng=self.plain._rng,
            sleep=self._sleep,
            metrics=self.metrics,
            access_log=access_log,
            explain_failure=explain_failure,
        )
        self.metrics.track_upstreams(lambda: [self.upstream])
        patterns = self.upstream.policy.retry.idempotent
        self.channel = MeshChannel(
            SERVICE,
            self.upstream.handler,
            is_idempotent=lambda path: matches_any(path, patterns),
            replay_limit_bytes=self.upstream.policy.retry.replay_buffer_bytes,
        )

    def value(self, name: str, **labels: str) -> float:
        """A sample's value as scraped; 0 for a series that does not exist (yet)."""
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    async def close(self) -> None:
        await self.plain.close()
        await self.upstream.close()


@pytest.fixture
async def rigs() -> AsyncIterator[list[MeteredRig]]:
    made: list[MeteredRig] = []
    yield made
    for rig in made:
        await rig.close()


@pytest.fixture
def metered(rigs: list[MeteredRig]) -> MeteredRig:
    rig = MeteredRig()
    rigs.append(rig)
    rig.serve(A, B, C)
    return rig


# ---------------------------------------------------------------- outbound


async def test_calls_are_counted_once_each_by_their_final_code(metered: MeteredRig) -> None:
    for _ in range(4):
        await metered.unary(GET)
    metered.transport.then(failure(grpc.StatusCode.NOT_FOUND), failure(grpc.StatusCode.NOT_FOUND))
    for _ in range(2):
        await metered.failing(GET)

    assert metered.value("meshlet_requests_total", **OUT, method=GET_LABEL, code="OK") == 4
    assert metered.value("meshlet_requests_total", **OUT, method=GET_LABEL, code="NOT_FOUND") == 2
    assert metered.value("meshlet_request_duration_seconds_count", **OUT, method=GET_LABEL) == 6
    assert metered.value("meshlet_attempts_total", service=SERVICE, method=GET_LABEL, code="OK") == 4


async def test_a_retried_call_is_one_request_with_two_attempts_and_one_retry(metered: MeteredRig) -> None:
    metered.transport.then(unavailable())

    await metered.unary(GET)

    assert metered.value("meshlet_requests_total", **OUT, method=GET_LABEL, code="OK") == 1
    assert metered.value("meshlet_attempts_total", service=SERVICE, method=GET_LABEL, code="UNAVAILABLE") == 1
    assert metered.value("meshlet_attempts_total", service=SERVICE, method=GET_LABEL, code="OK") == 1
    assert metered.value("meshlet_retries_total", service=SERVICE, method=GET_LABEL) == 1


async def test_the_duration_is_the_whole_call_backoff_included(metered: MeteredRig) -> None:
    metered.transport.then(unavailable(pushback_ms="400"))

    await metered.unary(GET)

    assert metered.value("meshlet_request_duration_seconds_sum", **OUT, method=GET_LABEL) == pytest.approx(0.4)


async def test_a_call_refused_before_any_attempt_counts_as_a_request_and_no_attempt(rigs: list[MeteredRig]) -> None:
    rig = MeteredRig()
    rigs.append(rig)
    rig.serve()  # discovery answered: no passing instance

    error = await rig.failing(RESERVE)

    assert isinstance(error, MeshError)
    label = RESERVE[1:]
    assert rig.value("meshlet_requests_total", **OUT, method=label, code="UNAVAILABLE") == 1
    assert rig.value("meshlet_attempts_total", service=SERVICE, method=label, code="UNAVAILABLE") == 0


async def test_budget_refusals_are_counted_per_upstream(rigs: list[MeteredRig]) -> None:
    rig = MeteredRig(retry={"budget_ratio": 0, "budget_min_per_s": 0.1, "budget_ttl": "10s"})
    rigs.append(rig)
    rig.serve(A, B, C)
    for endpoint in (A, B, C):
        rig.transport.always(endpoint, unavailable())

    await rig.failing(GET)
    await rig.failing(GET)

    assert rig.value("meshlet_retry_budget_refusals_total", service=SERVICE) == 2
    assert rig.value("meshlet_retries_total", service=SERVICE, method=GET_LABEL) == 1
    assert rig.value("meshlet_requests_total", **OUT, method=GET_LABEL, code="UNAVAILABLE") == 2


async def test_an_open_breaker_shows_in_state_transitions_and_endpoints(rigs: list[MeteredRig]) -> None:
    rig = MeteredRig(breaker={"failures": 2})
    rigs.append(rig)
    rig.serve(A, B, C)
    rig.transport.always(A, refused(A))
    assert rig.value("meshlet_breaker_state", service=SERVICE, endpoint=str(A)) == 0

    for _ in range(12):
        await rig.unary(GET)

    assert rig.value("meshlet_breaker_state", service=SERVICE, endpoint=str(A)) == 2
    assert rig.value("meshlet_breaker_state", service=SERVICE, endpoint=str(B)) == 0
    assert rig.value("meshlet_breaker_transitions_total", service=SERVICE, endpoint=str(A), state="open") == 1
    assert rig.value("meshlet_endpoints", service=SERVICE, state="ejected") == 1
    assert rig.value("meshlet_endpoints", service=SERVICE, state="healthy") == 2
    assert rig.value("meshlet_requests_total", **OUT, method=GET_LABEL, code="OK") == 12  # every call retried


async def test_a_response_stream_is_counted_when_it_ends_and_in_flight_until_then(metered: MeteredRig) -> None:
    metered.transport.then(Stream([b"one", b"two"]))
    stream = metered.channel.unary_stream(WATCH)(b"request")

    assert await stream.read() == b"one"
    assert metered.value("meshlet_in_flight", **OUT) == 1
    assert metered.value("meshlet_requests_total", **OUT, method=WATCH_LABEL, code="OK") == 0
    assert await stream.read() == b"two"
    assert await stream.read() is grpc.aio.EOF

    assert metered.value("meshlet_requests_total", **OUT, method=WATCH_LABEL, code="OK") == 1
    assert metered.value("meshlet_attempts_total", service=SERVICE, method=WATCH_LABEL, code="OK") == 1
    assert metered.value("meshlet_in_flight", **OUT) == 0


async def test_an_attempt_that_failed_its_tls_handshake_is_counted(rigs: list[MeteredRig]) -> None:
    rig = MeteredRig(explain_failure=HandshakesFail())
    rigs.append(rig)
    rig.serve(A, B, C)
    rig.transport.then(refused(A))

    await rig.unary(GET)

    assert rig.value("meshlet_tls_handshake_failures_total", direction="outbound", service=SERVICE) == 1


async def test_a_started_call_whose_status_reads_like_a_handshake_failure_is_not_counted_as_one(
    metered: MeteredRig,
) -> None:
    """Its status is a server's, or a broken connection's: a server may pass on a downstream's words."""
    metered.transport.then(
        unavailable(
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5001: Tls handshake failed "
            "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:CERTIFICATE_VERIFY_FAILED"
        )
    )

    await metered.unary(GET)

    assert metered.value("meshlet_attempts_total", service=SERVICE, method=GET_LABEL, code="UNAVAILABLE") == 1
    assert metered.value("meshlet_tls_handshake_failures_total", direction="outbound", service=SERVICE) == 0


async def test_method_labels_stop_growing_past_the_cap(metered: MeteredRig) -> None:
    calls = metered.metrics.calls("outbound", SERVICE)
    for index in range(MAX_METHODS + 5):
        calls.method(f"/x.Y/M{index}").request("OK", 0.001)

    assert metered.value("meshlet_requests_total", **OUT, method="x.Y/M0", code="OK") == 1
    assert metered.value("meshlet_requests_total", **OUT, method=OTHER_METHOD, code="OK") == 5


async def test_without_metrics_or_access_log_no_observe_stage_is_built(metered: MeteredRig) -> None:
    # compose() names each bound handler after its stage: the outermost one shows which stage comes first.
    assert metered.plain.handler.__qualname__ == "ApplyDeadline.bound"
    assert metered.upstream.handler.__qualname__ == f"{ObserveCall.__name__}.bound"


# ---------------------------------------------------------------- the access log


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def access_lines() -> Iterator[list[dict[str, Any]]]:
    logger = logging.getLogger(ACCESS_LOGGER)
    handler = Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_a_call_writes_one_access_log_line_with_its_trace_id(
    rigs: list[MeteredRig], access_lines: list[dict[str, Any]]
) -> None:
    rig = MeteredRig(access_log=AccessLog())
    rigs.append(rig)
    rig.serve(A, B)
    rig.transport.then(unavailable(pushback_ms="25"))
    tracer = TracerProvider().get_tracer("test")

    with tracer.start_as_current_span("handler") as span:
        await rig.unary(GET)
    trace_id = f"{span.get_span_context().trace_id:032x}"

    (line,) = access_lines
    assert line["logger"] == ACCESS_LOGGER
    assert {key: line[key] for key in ("direction", "service", "method", "code", "attempts", "trace_id")} == {
        "direction": "outbound",
        "service": SERVICE,
        "method": GET_LABEL,
        "code": "OK",
        "attempts": 2,
        "trace_id": trace_id,
    }
    assert line["endpoint"] in (str(A), str(B))
    assert line["duration_ms"] == pytest.approx(25.0)


async def test_the_access_log_line_of_a_failed_call_says_its_code(
    rigs: list[MeteredRig], access_lines: list[dict[str, Any]]
) -> None:
    rig = MeteredRig(access_log=AccessLog())
    rigs.append(rig)
    rig.serve(A)
    rig.transport.then(failure(grpc.StatusCode.NOT_FOUND))

    await rig.failing(GET)

    (line,) = access_lines
    assert (line["code"], line["attempts"], line["trace_id"]) == ("NOT_FOUND", 1, None)


# ---------------------------------------------------------------- inbound

GATEWAY = "spiffe://meshlet.local/ns/default/dc/dc1/svc/gateway"
BILLING = "spiffe://meshlet.local/ns/default/dc/dc1/svc/billing"
CREATE = "/shop.orders.v1.Orders/Create"
IN = {"direction": "inbound", "service": "orders"}


class FakeContext:
    """What the observe stage asks of grpc's servicer context: the status set, and when the call ends."""

    def __init__(self) -> None:
        self._code: grpc.StatusCode | None = None
        self.callbacks: list[Any] = []

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def cancelled(self) -> bool:
        return False

    def add_done_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def finish(self) -> None:
        for callback in self.callbacks:
            callback(self)


class Server:
    def __init__(self, handler: Any = None, **config: Any) -> None:
        self.clock = FakeClock()
        self.metrics = Metrics()
        self.parts = InboundParts.from_config(
            load_config(env={}, overrides={"service.name": "orders", **config}),
            consul=lambda: None,
            clock=self.clock,
            metrics=self.metrics,
        )
        self.pipeline = build_inbound(handler or self._ok, self.parts)

    async def _ok(self, call: InboundCall) -> Any:
        return b"reply"

    async def call(self, peer_uri: str | None = GATEWAY, context: Any = None) -> Any:
        deadline = Deadline.after(2.0, self.clock)
        return await self.pipeline(InboundCall(CREATE, (), b"request", context, deadline, peer_uri, "ipv4:10.0.0.7:1"))

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


CREATE_LABEL = CREATE[1:]
DENY_BILLING = {
    "tls.source": "consul",
    "authz.source": "local",
    "authz.default": "deny",
    "authz.rules": [{"from": "gateway", "to": "orders", "action": "allow"}],
}


async def test_intention_denials_are_counted_by_caller_and_as_requests() -> None:
    server = Server(**DENY_BILLING)

    await server.call(GATEWAY)
    for _ in range(3):
        with pytest.raises(MeshError):
            await server.call(BILLING)

    assert server.value("meshlet_authz_denials_total", service="orders", caller="billing") == 3
    assert (
        server.value("meshlet_requests_total", **IN, caller="billing", method=CREATE_LABEL, code="PERMISSION_DENIED")
        == 3
    )
    assert server.value("meshlet_requests_total", **IN, caller="gateway", method=CREATE_LABEL, code="OK") == 1
    assert server.value("meshlet_request_duration_seconds_count", **IN, method=CREATE_LABEL) == 4


async def test_rate_limited_calls_are_counted_by_caller() -> None:
    server = Server(**{"rate_limit.per_caller": {"rate_per_s": 1, "burst": 2}})

    outcomes = []
    for _ in range(5):
        try:
            await server.call(GATEWAY)
            outcomes.append("OK")
        except MeshError as error:
            outcomes.append(error.code().name)

    assert outcomes == ["OK", "OK", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]
    assert server.value("meshlet_rate_limited_total", service="orders", caller="gateway") == 3
    assert (
        server.value("meshlet_requests_total", **IN, caller="gateway", method=CREATE_LABEL, code="RESOURCE_EXHAUSTED")
        == 3
    )


async def test_a_call_without_a_certificate_is_counted_unauthenticated_not_as_a_handshake_failure() -> None:
    server = Server(**{"tls.source": "consul"})

    with pytest.raises(MeshError):
        await server.call(None)

    assert (
        server.value(
            "meshlet_requests_total", **IN, caller="(unidentified)", method=CREATE_LABEL, code="UNAUTHENTICATED"
        )
        == 1
    )
    assert server.value("meshlet_tls_handshake_failures_total", direction="inbound", service="orders") == 0


async def test_an_inbound_call_is_counted_by_the_status_its_handler_set() -> None:
    async def handler(call: InboundCall) -> Any:
        call.context.set_code(grpc.StatusCode.ALREADY_EXISTS)
        return b"reply"

    server = Server(handler)

    await server.call(context=FakeContext())

    assert (
        server.value("meshlet_requests_total", **IN, caller="gateway", method=CREATE_LABEL, code="ALREADY_EXISTS") == 1
    )


async def test_a_handler_that_raises_is_counted_unknown() -> None:
    async def handler(call: InboundCall) -> Any:
        raise RuntimeError("bug")

    server = Server(handler)

    with pytest.raises(RuntimeError):
        await server.call(context=FakeContext())

    assert server.value("meshlet_requests_total", **IN, caller="gateway", method=CREATE_LABEL, code="UNKNOWN") == 1


async def test_a_streaming_inbound_call_is_in_flight_until_grpc_ends_it() -> None:
    async def replies() -> AsyncIterator[bytes]:
        yield b"one"

    async def handler(call: InboundCall) -> Any:
        return replies()

    server = Server(handler)
    context = FakeContext()

    stream = await server.call(context=context)
    assert server.value("meshlet_in_flight", **IN) == 1
    assert server.value("meshlet_requests_total", **IN, caller="gateway", method=CREATE_LABEL, code="OK") == 0
    assert [reply async for reply in stream] == [b"one"]
    context.set_code(grpc.StatusCode.INTERNAL)
    context.finish()

    assert server.value("meshlet_in_flight", **IN) == 0
    assert server.value("meshlet_requests_total", **IN, caller="gateway", method=CREATE_LABEL, code="INTERNAL") == 1


async def test_an_inbound_access_log_line_names_the_peer(access_lines: list[dict[str, Any]]) -> None:
    server = Server(**{"tls.source": "consul", "authz.source": "local", "telemetry.access_log": True})

    await server.call(GATEWAY, context=FakeContext())
    await asyncio.sleep(0)

    (line,) = access_lines
    assert {key: line[key] for key in ("direction", "service", "method", "code", "peer", "peer_address")} == {
        "direction": "inbound",
        "service": "orders",
        "method": CREATE_LABEL,
        "code": "OK",
        "peer": GATEWAY,
        "peer_address": "ipv4:10.0.0.7:1",
    }


async def test_access_log_false_writes_no_line(access_lines: list[dict[str, Any]]) -> None:
    server = Server(**{"telemetry.access_log": False})

    await server.call(context=FakeContext())

    assert access_lines == []
    assert server.value("meshlet_requests_total", **IN, caller="gateway", method=CREATE_LABEL, code="OK") == 1


async def test_a_streams_access_log_line_carries_the_trace_and_span_ids_of_its_span(
    access_lines: list[dict[str, Any]],
) -> None:
    async def replies() -> AsyncIterator[bytes]:
        yield b"one"

    async def handler(call: InboundCall) -> Any:
        return replies()

    server = Server(handler, **{"telemetry.access_log": True})
    context = FakeContext()
    with TracerProvider().get_tracer("test").start_as_current_span("server") as span:
        await server.call(context=context)
    context.finish()  # grpc ends the call after its span stopped being current: the line is written now

    (line,) = access_lines
    ids = span.get_span_context()
    assert (line["code"], line["trace_id"], line["span_id"]) == ("OK", f"{ids.trace_id:032x}", f"{ids.span_id:016x}")
