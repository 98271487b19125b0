"""The access log: one line per call on the ``meshlet.access`` logger, its fields as the record's extras, so
telemetry/logging.py's JsonFormatter writes one JSON object per call (``telemetry.access_log: false`` drops the
observe stages' part in it). Cheap when nobody listens: a disabled logger costs one cached level check."""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.trace import SpanContext

ACCESS_LOGGER = "meshlet.access"


def current_span() -> SpanContext | None:
    """The current span's context, or None outside a valid span: taken while a call's span is current, for a
    line or an exemplar written after it (a stream's end)."""
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def trace_id_of(span: SpanContext | None) -> str | None:
    return format(span.trace_id, "032x") if span is not None else None


def span_id_of(span: SpanContext | None) -> str | None:
    return format(span.span_id, "016x") if span is not None else None


def sampled_trace_id(span: SpanContext | None) -> int | None:
    """The trace id of a span that is exported (sampled): only such a trace is there to open from an exemplar."""
    return span.trace_id if span is not None and span.trace_flags.sampled else None


class AccessLog:
    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)

    def enabled(self) -> bool:
        return self._logger.isEnabledFor(logging.INFO)

    def outbound(
        self,
        service: str,
        method: str,
        code: str,
        duration_s: float,
        *,
        attempts: int,
        endpoint: str | None,
        span: SpanContext | None,
    ) -> None:
        duration_ms = round(duration_s * 1000, 3)
        self._logger.info(
            "outbound %s %s %s %.1fms",
            service,
            method,
            code,
            duration_ms,
            extra={
                "direction": "outbound",
                "service": service,
                "method": method,
                "code": code,
                "duration_ms": duration_ms,
                "attempts": attempts,
                "endpoint": endpoint,
                "trace_id": trace_id_of(span),
                "span_id": span_id_of(span),
            },
        )

    def inbound(
        self,
        service: str,
        method: str,
        code: str,
        duration_s: float,
        *,
        peer: str | None,
        peer_address: str,
        span: SpanContext | None,
    ) -> None:
        duration_ms = round(duration_s * 1000, 3)
        self._logger.info(
            "inbound %s %s %s %.1fms",
            service,
            method,
            code,
            duration_ms,
            extra={
                "direction": "inbound",
                "service": service,
                "method": method,
                "code": code,
                "duration_ms": duration_ms,
                "peer": peer,
                "peer_address": peer_address,
                "trace_id": trace_id_of(span),
                "span_id": span_id_of(span),
            },
        )

    def http(
        self,
        method: str,
        route: str,
        path: str,
        code: int,
        duration_s: float,
        *,
        request_id: str | None,
        user_agent: str | None,
        peer_address: str | None,
        span: SpanContext | None,
    ) -> None:
        """An HTTP request the edge answered: `route` is its template (or ``(unmatched)``), `path` as sent."""
        duration_ms = round(duration_s * 1000, 3)
        self._logger.info(
            "http %s %s %d %.1fms",
            method,
            path,
            code,
            duration_ms,
            extra={
                "direction": "http",
                "http_method": method,
                "route": route,
                "path": path,
                "code": code,
                "duration_ms": duration_ms,
                "request_id": request_id,
                "user_agent": user_agent,
                "peer_address": peer_address,
                "trace_id": trace_id_of(span),
                "span_id": span_id_of(span),
            },
        )
