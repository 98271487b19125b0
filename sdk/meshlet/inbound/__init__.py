"""The inbound data path: one module per stage, in request order.

identify -> authorize -> rate_limit -> span -> deadline, ending in the servicer (SDK) or the local app
(sidecar). Identity, authorization and rate limits arrive with the security issue and tracing with the
telemetry issue; absent features are absent from the list rather than checked per call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from meshlet.call import InboundCall
from meshlet.inbound.deadline import ExposeDeadline
from meshlet.pipeline import compose


def build_inbound(terminal: Callable[[InboundCall], Awaitable[Any]]) -> Callable[[InboundCall], Awaitable[Any]]:
    return compose(
        [
            ExposeDeadline(),  # last before the handler: its outbound calls inherit what is left of this deadline
        ],
        terminal=terminal,
    )
