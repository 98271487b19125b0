"""The one configuration schema for the SDK and the sidecar, and `load_config`, which layers flags over
environment over a YAML file over defaults and turns any problem into one `ConfigError` naming the field, the
value, what is allowed and where the value came from.

Durations are written ``25ms``, ``1.5s``, ``2m``, ``1h``, ``500us`` (or a bare number of seconds) and exposed
as float seconds under the YAML key names (``timeout``, ``backoff_base``, ``reset_timeout``...): DESIGN.md
fixes those names, so unlike the rest of meshlet they carry no ``_s`` suffix.
"""

from meshlet.config.fields import (
    DEFAULT_CONSUL_ADDRESS,
    REDACTED,
    STATUS_CODES,
    AtLeastOne,
    BudgetTtl,
    DeregisterAfter,
    Duration,
    HostPort,
    MaxAttempts,
    NotNegative,
    Port,
    PositiveDuration,
    Ratio,
    StatusName,
    listen_host,
    normalise_consul_address,
    parse_duration,
    split_host_port,
)
from meshlet.config.load import load_config
from meshlet.config.schema import (
    AuthzConfig,
    AuthzRule,
    BreakerPolicy,
    CallerRateLimit,
    Config,
    ConsulConfig,
    EdgeConfig,
    RateLimitConfig,
    RetryPolicy,
    ServiceConfig,
    SidecarConfig,
    TelemetryConfig,
    TlsConfig,
    UpstreamPolicy,
)

__all__ = [
    "DEFAULT_CONSUL_ADDRESS",
    "REDACTED",
    "STATUS_CODES",
    "AtLeastOne",
    "AuthzConfig",
    "AuthzRule",
    "BreakerPolicy",
    "BudgetTtl",
    "CallerRateLimit",
    "Config",
    "ConsulConfig",
    "DeregisterAfter",
    "Duration",
    "EdgeConfig",
    "HostPort",
    "MaxAttempts",
    "NotNegative",
    "Port",
    "PositiveDuration",
    "RateLimitConfig",
    "Ratio",
    "RetryPolicy",
    "ServiceConfig",
    "SidecarConfig",
    "StatusName",
    "TelemetryConfig",
    "TlsConfig",
    "UpstreamPolicy",
    "listen_host",
    "load_config",
    "normalise_consul_address",
    "parse_duration",
    "split_host_port",
]
