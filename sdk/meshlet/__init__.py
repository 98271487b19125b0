"""meshlet: a lightweight gRPC service mesh for Python.

The public surface is exactly what ``__all__`` lists; every other module may change.

Importing meshlet before grpc (as meshlet's own processes do) keeps grpc core's own log lines, plain text such
as chttp2's ``Got goaway`` at shutdown, out of a log whose every line is JSON: GRPC_VERBOSITY defaults to NONE.
grpc reads it once, at its import; an operator who sets GRPC_VERBOSITY or GRPC_TRACE gets grpc's lines back.
"""

import os

if "GRPC_TRACE" not in os.environ:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from meshlet.config import Config, load_config
from meshlet.errors import (
    BreakerOpen,
    BudgetExhausted,
    BulkheadFull,
    ChannelClosed,
    ConfigError,
    DeadlineTooShort,
    ErrorReason,
    IntentionDenied,
    MeshError,
    NoHealthyEndpoint,
    RateLimited,
    Unauthenticated,
    UpstreamFailed,
    error_info,
)
from meshlet.mesh import Mesh

__all__ = [
    "BreakerOpen",
    "BudgetExhausted",
    "BulkheadFull",
    "ChannelClosed",
    "Config",
    "ConfigError",
    "DeadlineTooShort",
    "ErrorReason",
    "IntentionDenied",
    "Mesh",
    "MeshError",
    "NoHealthyEndpoint",
    "RateLimited",
    "Unauthenticated",
    "UpstreamFailed",
    "error_info",
    "load_config",
]
