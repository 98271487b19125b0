"""StateLog: one log line per state change an operator must see without a sampled trace, from the EventBus:
a circuit opens, half-opens or closes; the picker ejects or readmits an endpoint; an upstream's retry budget
runs dry, and recovers (seen when it lets a retry through again). Each line names the service, the endpoint
and why (``event``, ``service``, ``endpoint``, ``reason``); a flapping endpoint is held to one line per kind of
change per window (telemetry/log_window.py)."""

from __future__ import annotations

import logging

from meshlet.endpoints import Endpoint
from meshlet.events import (
    BreakerClosed,
    BreakerHalfOpened,
    BreakerOpened,
    BudgetRefused,
    EndpointEjected,
    EndpointReadmitted,
    EndpointsChanged,
    Event,
    EventBus,
    RetryNotAttempted,
    RetryScheduled,
)
from meshlet.telemetry.log_window import WINDOW_S, WindowedLog

log = logging.getLogger("meshlet.state")


class StateLog:
    """Subscribe with `watch(events)`; `flush()` writes what the windows hold back (at close)."""

    def __init__(self, logger: logging.Logger = log, *, window_s: float = WINDOW_S) -> None:
        self._warn = WindowedLog(logger, logging.WARNING, window_s=window_s)
        self._info = WindowedLog(logger, logging.INFO, window_s=window_s)
        self._breakers: dict[tuple[str, Endpoint], str] = {}  # the last state each breaker entered
        self._dry: dict[str, int] = {}  # upstreams whose budget refused, and how many retries since

    def watch(self, events: EventBus) -> None:
        events.subscribe(self.on_event)

    def flush(self) -> None:
        self._warn.flush()
        self._info.flush()

    def on_event(self, event: Event) -> None:
        match event:
            case BreakerOpened(upstream, endpoint, reopen_after_s):
                was = self._breakers.get((upstream, endpoint))
                self._breakers[(upstream, endpoint)] = "open"
                reason = (
                    "its half-open probe failed"
                    if was == "half_open"
                    else f"consecutive failures reached upstreams.{upstream}.breaker.failures"
                )
                self._line(
                    self._warn, "breaker_opened", upstream, endpoint, reason,
                    "circuit opened for %s at %s: %s; a probe may pass in %.1fs",
                    reopen_after_s,
                    reopen_after_s=round(reopen_after_s, 3),
                )  # fmt: skip
            case BreakerHalfOpened(upstream, endpoint):
                self._breakers[(upstream, endpoint)] = "half_open"
                self._line(
                    self._info, "breaker_half_opened", upstream, endpoint, "its reset timeout passed",
                    "circuit half-open for %s at %s: %s; one probe may pass",
                )  # fmt: skip
            case BreakerClosed(upstream, endpoint):
                self._breakers[(upstream, endpoint)] = "closed"
                self._line(
                    self._info, "breaker_closed", upstream, endpoint, "its probe succeeded",
                    "circuit closed for %s at %s: %s",
                )  # fmt: skip
            case EndpointEjected(upstream, endpoint):
                self._line(
                    self._warn, "endpoint_ejected", upstream, endpoint, "its circuit is open",
                    "ejected %s's endpoint %s: %s; the picker leaves it out",
                )  # fmt: skip
            case EndpointReadmitted(upstream, endpoint):
                state = self._breakers.get((upstream, endpoint), "closed")
                reason = {"half_open": "its circuit half-opened for a probe", "closed": "its circuit closed"}.get(
                    state, "too many endpoints were ejected (ejection cap or panic)"
                )
                self._line(
                    self._info, "endpoint_readmitted", upstream, endpoint, reason,
                    "readmitted %s's endpoint %s: %s",
                )  # fmt: skip
            case RetryNotAttempted(upstream=upstream, why="budget") | BudgetRefused(upstream=upstream):
                self._budget_refused(upstream)
            case RetryScheduled(upstream=upstream) if upstream in self._dry:
                refused = self._dry.pop(upstream)
                self._info.log(
                    ("retry_budget_recovered", upstream),
                    "retry budget of %s recovered: it lets retries through again, after refusing %d",
                    upstream,
                    refused,
                    extra={
                        "event": "retry_budget_recovered",
                        "service": upstream,
                        "reason": "its window holds retries again",
                        "refused": refused,
                    },
                )
            case EndpointsChanged(upstream=upstream, removed=removed):  # pods come and go: forget the departed
                for endpoint in removed:
                    self._breakers.pop((upstream, endpoint), None)
            case _:
                pass

    def _budget_refused(self, upstream: str) -> None:
        if upstream in self._dry:
            self._dry[upstream] += 1
            return
        self._dry[upstream] = 1
        self._warn.log(
            ("retry_budget_exhausted", upstream),
            "retry budget of %s ran dry: failed attempts are not retried until it recovers",
            upstream,
            extra={
                "event": "retry_budget_exhausted",
                "service": upstream,
                "reason": f"retries reached upstreams.{upstream}.retry.budget_ratio of requests plus the floor",
            },
        )

    @staticmethod
    def _line(
        to: WindowedLog,
        event: str,
        upstream: str,
        endpoint: Endpoint,
        reason: str,
        message: str,
        *args: object,
        **fields: object,
    ) -> None:
        address = str(endpoint)
        to.log(
            (event, upstream, address),
            message,
            upstream,
            address,
            reason,
            *args,
            extra={"event": event, "service": upstream, "endpoint": address, "reason": reason, **fields},
        )
