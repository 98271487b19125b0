"""meshlet: a lightweight gRPC service mesh for Python.

The public surface is exactly what ``__all__`` lists; every other module may change.
"""

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
