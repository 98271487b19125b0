"""What the edge tells about each HTTP request: a SERVER span by OpenTelemetry's HTTP conventions, which the
outbound call's span (mesh.channel()'s pipeline) hangs under and which continues a caller's W3C ``traceparent``;
the request counted and timed by route (``meshlet_http_requests_total``, ``meshlet_http_request_duration_seconds``);
and, when ``telemetry.access_log`` is on, one access log line.

The first stage (meshlet_edge.stages) of the edge's handler, which names the route it matched (`note_route`). Labels
stay bounded whatever a client sends: the route is a template of the route table or ``(unmatched)``, the method
one of HTTP's or ``_OTHER``. The route travels in a context variable (the handler runs in the middleware's
context), not in the request: aiohttp 3.14 warns on plain request keys, and its typed ones are newer than the
oldest aiohttp meshlet takes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar, Token
from typing import Any

from aiohttp import web
from opentelemetry import propagate
from opentelemetry.context import Context, attach, detach
from opentelemetry.trace import Span, Status, StatusCode, Tracer, set_span_in_context
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Exemplar

from meshlet.telemetry.access_log import AccessLog, sampled_trace_id
from meshlet.telemetry.metrics import BUCKET_LABELS, MethodMetrics
from meshlet.telemetry.tracing import SERVER
from meshlet_edge.stages import Handler, HttpStage

_ROUTE: ContextVar[str | None] = ContextVar("meshlet_edge_route", default=None)
UNMATCHED = "(unmatched)"
OTHER_METHOD = "_OTHER"  # OpenTelemetry's name for a method outside the known set
METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})
CLIENT_GONE = 499  # the client went away before the answer (nginx's code; CANCELLED maps to it too)
REQUEST_ID = "X-Request-Id"


def note_route(template: str) -> None:
    """Called by the handler with the template of the route it matched: the span's http.route, the route label."""
    _ROUTE.set(template)


def method_label(method: str) -> str:
    return method if method in METHODS else OTHER_METHOD


class HttpMetrics:
    """Requests by (route, method): counts by status code and a duration histogram, kept in plain numbers (the
    handler and the scrape share the event loop's thread) and turned into families when scraped."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], MethodMetrics] = {}

    def observe(self, route: str, method: str, code: int, duration_s: float, trace_id: int | None) -> None:
        key = (route, method)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = MethodMetrics(route)
        series.request(str(code), duration_s, trace_id)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "meshlet_http_requests",
            "HTTP requests the edge answered, by route template ((unmatched): no route), method and status code "
            "(499: the client went away first)",
            labels=["route", "method", "code"],
        )
        duration = HistogramMetricFamily(
            "meshlet_http_request_duration_seconds",
            "HTTP request duration at the edge, from the request's headers to its answer",
            labels=["route", "method"],
        )
        for (route, method), series in list(self._series.items()):
            for code, count in list(series.requests.items()):
                requests.add_metric([route, method, code], count)
            cumulative = 0
            buckets: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
            for le, count, exemplar in zip(BUCKET_LABELS, series.buckets, series.exemplars, strict=True):
                cumulative += count
                if exemplar is None:
                    buckets.append((le, cumulative))
                else:
                    buckets.append((le, cumulative, Exemplar({"trace_id": f"{exemplar[0]:032x}"}, exemplar[1])))
            duration.add_metric([route, method], buckets, series.sum_s)
        yield from (requests, duration)


class HttpObserver:
    """The middleware (`middleware()`): `tracer` None means tracing off, `access_log` None the access log off."""

    def __init__(
        self,
        tracer: Tracer | None,
        metrics: HttpMetrics,
        access_log: AccessLog | None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._tracer = tracer
        self._metrics = metrics
        self._access_log = access_log
        self._clock = clock

    def middleware(self) -> HttpStage:
        """The stage, first of the edge's: it sees every request and its answer, a refusal by a policy too."""
        return self._observe

    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        start = self._clock()
        method = method_label(request.method)
        span: Span | None = None
        token: Token[Context] | None = None
        if self._tracer is not None:
            parent = propagate.extract(request.headers)  # the caller's traceparent, if it sent one
            span = self._start_span(self._tracer, request, method, parent)
            token = attach(set_span_in_context(span, parent))
        code = 500
        failure: BaseException | None = None
        request_id = request.headers.get(REQUEST_ID)
        matched = _ROUTE.set(None)  # a connection's requests share its task, and so its context
        try:
            response = await handler(request)
            code = response.status
            request_id = request_id or response.headers.get(REQUEST_ID)  # one the edge made up for the caller
            return response
        except web.HTTPException as error:  # aiohttp's own answers (a body over the limit, say)
            code = error.status
            raise
        except asyncio.CancelledError:
            code = CLIENT_GONE
            raise
        except Exception as error:
            failure = error
            raise
        finally:
            duration_s = self._clock() - start
            route = _ROUTE.get() or UNMATCHED
            _ROUTE.reset(matched)
            context = span.get_span_context() if span is not None else None
            if span is not None and token is not None:
                detach(token)
                _end(span, method, route, code, failure, request_id)
            self._metrics.observe(route, method, code, duration_s, sampled_trace_id(context))
            if self._access_log is not None:
                self._access_log.http(
                    method,
                    route,
                    request.rel_url.raw_path,
                    code,
                    duration_s,
                    request_id=request_id,
                    user_agent=request.headers.get("User-Agent"),
                    peer_address=request.remote,
                    span=context if context is not None and context.is_valid else None,
                )

    @staticmethod
    def _start_span(tracer: Tracer, request: web.Request, method: str, parent: Context) -> Span:
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": request.rel_url.raw_path,
            "url.scheme": request.scheme,
            "network.protocol.version": f"{request.version.major}.{request.version.minor}",
        }
        if method == OTHER_METHOD:
            attributes["http.request.method_original"] = request.method
        if request.remote:
            attributes["client.address"] = request.remote
        if user_agent := request.headers.get("User-Agent"):
            attributes["user_agent.original"] = user_agent
        name = method if method != OTHER_METHOD else "HTTP"  # renamed "METHOD /route" once a route matched
        return tracer.start_span(name, context=parent, kind=SERVER, attributes=attributes)


def _end(span: Span, method: str, route: str, code: int, failure: BaseException | None, request_id: str | None) -> None:
    """The conventions' ending: the route and status; ERROR on a 5xx only (a 4xx is the client's, not ours). The
    request id is the caller's ``X-Request-Id``, else the one the answer carries."""
    attributes: dict[str, Any] = {}
    if request_id:
        attributes["http.request.header.x-request-id"] = [request_id]
    if route != UNMATCHED:
        attributes["http.route"] = route
        span.update_name(f"{method if method != OTHER_METHOD else 'HTTP'} {route}")
    if code == CLIENT_GONE:
        attributes["error.type"] = "client_gone"
    else:
        attributes["http.response.status_code"] = code
    if failure is not None:
        span.record_exception(failure)
        attributes["error.type"] = type(failure).__qualname__
    elif code >= 500 and code != CLIENT_GONE:
        attributes["error.type"] = str(code)
    span.set_attributes(attributes)
    if code >= 500 and code != CLIENT_GONE:
        span.set_status(Status(StatusCode.ERROR, f"HTTP {code}"))
    span.end()
