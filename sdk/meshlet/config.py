"""The one configuration schema for the SDK and the sidecar, and `load_config`, which layers flags over
environment over a YAML file over defaults and turns any problem into one `ConfigError` naming the field, the
value, what is allowed and where the value came from.

Durations are written ``25ms``, ``1.5s``, ``2m``, ``1h``, ``500us`` (or a bare number of seconds) and exposed
as float seconds under the YAML key names (``timeout``, ``backoff_base``, ``reset_timeout``...): DESIGN.md
fixes those names, so unlike the rest of meshlet they carry no ``_s`` suffix.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError
from pydantic import model_validator as _model_validator
from pydantic_core import PydanticCustomError

from meshlet.errors import ConfigError

DEFAULT_CONSUL_ADDRESS = "http://127.0.0.1:8500"
REDACTED = "<redacted>"
# grpc.StatusCode's names, literal so that configuration does not import grpc.
STATUS_CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"({_NUMBER})(ns|us|µs|ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_NUMBER}(?:ns|us|µs|ms|s|m|h))+")
_METHOD = re.compile(r"/[A-Za-z_][\w.]*/(?:\*|[A-Za-z_]\w*)")


def parse_duration(value: object) -> float:
    """``"25ms"``, ``"1m30s"``, ``"1.5"`` or ``1.5`` -> seconds. Raises ValueError otherwise, negatives included."""
    text = value.strip() if isinstance(value, str) else ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif re.fullmatch(_NUMBER, text):
        seconds = float(text)
    elif _DURATION.fullmatch(text):
        seconds = sum(float(number) * _UNITS[unit] for number, unit in _DURATION_PART.findall(text))
    else:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("must be a duration such as 25ms, 1.5s, 2m, 1h or 500us (a bare number is seconds)")
    return seconds


def split_host_port(text: str) -> tuple[str, int]:
    """``"127.0.0.1:15001"`` or ``"[::1]:15001"`` -> (host, port). Raises ValueError for anything else."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address needs brackets to be told apart from its port
    if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535) or any(c.isspace() for c in host):
        raise ValueError("must be host:port, e.g. 127.0.0.1:15001 (port 1-65535, an IPv6 host in brackets)")
    return host, int(port)


def normalise_consul_address(text: str) -> str:
    """``"host:port"`` or a URL -> ``"http://host:port"`` (``https`` kept), as the Consul CLI reads
    $CONSUL_HTTP_ADDR. Without a port the scheme's own applies, as there."""
    scheme, sep, rest = text.strip().rstrip("/").partition("://")
    scheme, rest = (scheme.lower(), rest) if sep else ("http", scheme)
    if scheme not in ("http", "https") or not rest or any(c in rest for c in "/@?# "):
        raise ValueError("must be host:port or http(s)://host:port, e.g. http://127.0.0.1:8500")
    if ":" in rest.rpartition("]")[2]:
        split_host_port(rest)
    return f"{scheme}://{rest}"


def _invalid(allowed: str, *, field: tuple[str, ...] = (), value: object = None, blame: str = "") -> Exception:
    """A validation error in our words. A model-level check names the `field` it faults (so the path is exact)
    and may `blame` the sibling whose setting made it wrong (so the source is right)."""
    context: dict[str, Any] = {"allowed": allowed, "blame": blame}
    if field:
        context |= {"field": field, "value": value}
    return PydanticCustomError("meshlet", "{allowed}", context)


def _checked(check: Callable[[Any], bool], allowed: str) -> AfterValidator:
    def validate(value: Any) -> Any:
        if not check(value):
            raise _invalid(allowed)
        return value

    return AfterValidator(validate)


def _parsed(parse: Callable[[str], Any]) -> AfterValidator:
    """Checks and normalises a string once pydantic has made it one (a YAML ``15001`` included)."""

    def validate(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            raise _invalid(str(exc)) from None

    return AfterValidator(validate)


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _invalid(str(exc)) from None


def _host_port(text: str) -> str:
    split_host_port(text)
    return text.strip()


def _status_name(text: str) -> str:
    name = text.strip().upper().replace("-", "_")  # Envoy spells them resource-exhausted
    if name == "OK" or name not in STATUS_CODES:
        raise ValueError("must be a gRPC status code name other than OK: " + ", ".join(STATUS_CODES[1:]))
    return name


def _method_pattern(allow_any: bool) -> AfterValidator:
    shapes = '"/pkg.Service/Method" or "/pkg.Service/*"'
    return _checked(
        lambda m: (allow_any and m == "*") or bool(_METHOD.fullmatch(m)),
        f'must be "*", {shapes}' if allow_any else f"must be {shapes}",
    )


Duration = Annotated[float, BeforeValidator(_duration)]
PositiveDuration = Annotated[Duration, _checked(lambda s: s > 0, "must be a duration above zero")]
Ratio = Annotated[float, _checked(lambda x: 0.0 <= x <= 1.0, "must be between 0 and 1")]
Port = Annotated[int, _checked(lambda p: 1 <= p <= 65535, "must be between 1 and 65535")]
AtLeastOne = Annotated[int, _checked(lambda n: n >= 1, "must be at least 1")]
NotNegative = Annotated[float, _checked(lambda x: x >= 0, "must be at least 0")]
HostPort = Annotated[str, _parsed(_host_port)]
StatusName = Annotated[str, _parsed(_status_name)]
MaxAttempts = Annotated[
    int,
    _checked(lambda n: n >= 1, "must be between 1 and 5"),
    _checked(lambda n: n <= 5, "must be between 1 and 5: gRPC's retry design (A6) caps a call at 5 attempts"),
]
BudgetTtl = Annotated[Duration, _checked(lambda s: 1 <= s <= 60, "must be between 1s and 60s, as Finagle's")]
DeregisterAfter = Annotated[Duration, _checked(lambda s: s >= 60, "must be at least 1m, Consul's minimum")]


class _Section(BaseModel):
    """Frozen, and strict about keys: an unknown key is an error with a "did you mean" hint, never ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, coerce_numbers_to_str=True)

    @_model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any) -> Any:
        if data is None:
            return {}  # `tls:` with nothing under it means the defaults
        if isinstance(data, Mapping):
            known = [*cls.model_fields, *(f.alias for f in cls.model_fields.values() if f.alias)]
            for key in data:
                if key not in known:
                    close = difflib.get_close_matches(str(key), known, n=1)
                    hint = f"did you mean {close[0]!r}?" if close else "expected one of " + ", ".join(known)
                    raise _invalid(f"unknown key; {hint}", field=(str(key),), value=data[key])
        return data


class ServiceConfig(_Section):
    name: str | None = None
    address: str | None = "127.0.0.1"  # registered in Consul; None lets the registrar choose
    tags: tuple[str, ...] = ()
    meta: dict[str, str] = Field(default_factory=dict)
    check_ttl: PositiveDuration = 10.0
    deregister_critical_after: DeregisterAfter = 60.0
    drain_grace: Duration = 10.0


class ConsulConfig(_Section):
    address: Annotated[str, _parsed(normalise_consul_address)] = DEFAULT_CONSUL_ADDRESS
    token: SecretStr | None = None
    cacert: Path | None = None
    datacenter: str | None = None


class TlsConfig(_Section):
    """``files``: PEM paths relative to the working directory; ``consul``: the Connect CA's leaf and roots."""

    source: Literal["consul", "files", "off"] = "off"
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    trust_domain: str | None = None

    @_model_validator(mode="after")
    def _files_are_named(self) -> TlsConfig:
        missing = [name for name in ("cert", "key", "ca") if getattr(self, name) is None]
        if self.source == "files" and missing:
            allowed = f"a PEM file path is required when tls.source is 'files' (missing: {', '.join(missing)})"
            raise _invalid(allowed, field=(missing[0],), blame="source")
        return self


class SidecarConfig(_Section):
    app: HostPort | None = None
    inbound: HostPort = "0.0.0.0:15006"
    outbound: HostPort = "127.0.0.1:15001"
    admin: HostPort = "127.0.0.1:15000"
    routes: dict[str, str] = Field(default_factory=dict)  # gRPC service name -> upstream name


class RetryPolicy(_Section):
    """Full-jitter exponential backoff, inside a retry budget with Finagle's semantics: `budget_ratio` of the
    requests seen over `budget_ttl`, plus `budget_min_per_s` so that a quiet upstream can still retry."""

    max_attempts: MaxAttempts = 3
    backoff_base: PositiveDuration = 0.025
    backoff_max: PositiveDuration = 1.0
    on: tuple[StatusName, ...] = ("UNAVAILABLE",)
    budget_ratio: Ratio = 0.2
    budget_min_per_s: NotNegative = 10.0
    budget_ttl: BudgetTtl = 10.0
    idempotent: tuple[Annotated[str, _method_pattern(allow_any=False)], ...] = ()
    replay_buffer_bytes: Annotated[int, _checked(lambda n: n >= 0, "must be at least 0")] = 65536

    @_model_validator(mode="after")
    def _backoff_is_ordered(self) -> RetryPolicy:
        if self.backoff_max < self.backoff_base:
            allowed = f"must be at least backoff_base ({self.backoff_base}s)"
            raise _invalid(allowed, field=("backoff_max",), value=self.backoff_max, blame="backoff_base")
        return self


class BreakerPolicy(_Section):
    failures: AtLeastOne = 5
    reset_timeout: PositiveDuration = 10.0
    reset_timeout_max: PositiveDuration = 60.0
    max_ejection_ratio: Ratio = 0.5
    panic_threshold: Ratio = 0.5

    @_model_validator(mode="after")
    def _reset_is_ordered(self) -> BreakerPolicy:
        if self.reset_timeout_max < self.reset_timeout:
            allowed = f"must be at least reset_timeout ({self.reset_timeout}s)"
            raise _invalid(allowed, field=("reset_timeout_max",), value=self.reset_timeout_max, blame="reset_timeout")
        return self


class UpstreamPolicy(_Section):
    """How calls to one upstream are made. `timeout` applies only when the caller set no deadline of its own."""

    local_port: Port | None = None
    timeout: PositiveDuration = 5.0
    deadline_floor: Duration = 0.005
    balancer: Literal["p2c", "round_robin"] = "p2c"
    tags: tuple[str, ...] = ()  # only endpoints carrying all of these
    max_in_flight: AtLeastOne = 1000
    retry: RetryPolicy = RetryPolicy()
    breaker: BreakerPolicy = BreakerPolicy()


class AuthzRule(_Section):
    from_: str = Field(alias="from")  # a source service name, or "*"
    to: str
    methods: tuple[Annotated[str, _method_pattern(allow_any=True)], ...] = ("*",)
    action: Literal["allow", "deny"]


class AuthzConfig(_Section):
    default: Literal["allow", "deny"] = "allow"
    source: Literal["consul", "local"] = "local"
    fail_open: bool = False  # when intentions cannot be read: allow (True) or deny (False)
    rules: tuple[AuthzRule, ...] = ()


class CallerRateLimit(_Section):
    rate_per_s: Annotated[float, _checked(lambda x: x > 0, "must be above 0 (unset means no limit)")] | None = None
    burst: AtLeastOne | None = None  # None: one second's worth, ceil(rate_per_s)


class RateLimitConfig(_Section):
    """Inbound token buckets. `per_caller`: one bucket per caller identity for all its calls. `per_method`:
    keyed by method pattern (``"/pkg.Service/Method"``, ``"/pkg.Service/*"`` or ``"*"``), one bucket per caller
    *per method* the pattern matches; the most specific pattern applies (exact, then service, then ``*``), and
    an entry without `rate_per_s` exempts its methods from the less specific ones. A call must pass both."""

    per_caller: CallerRateLimit = CallerRateLimit()
    per_method: dict[Annotated[str, _method_pattern(allow_any=True)], CallerRateLimit] = Field(default_factory=dict)


class TelemetryConfig(_Section):
    service_name: str | None = None  # default: $OTEL_SERVICE_NAME; None: use service.name
    otlp_endpoint: str | None = None  # default: $OTEL_EXPORTER_OTLP_ENDPOINT; None keeps traces in process
    sample_ratio: Ratio = 1.0
    metrics_port: Port | None = None
    access_log: bool = True


class Config(_Section):
    """The whole configuration. `upstreams` holds each listed upstream already merged over `upstream_defaults`."""

    service: ServiceConfig = ServiceConfig()
    consul: ConsulConfig = ConsulConfig()
    tls: TlsConfig = TlsConfig()
    sidecar: SidecarConfig = SidecarConfig()
    upstream_defaults: UpstreamPolicy = UpstreamPolicy()
    upstreams: dict[str, UpstreamPolicy] = Field(default_factory=dict)
    authz: AuthzConfig = AuthzConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    telemetry: TelemetryConfig = TelemetryConfig()

    @_model_validator(mode="before")
    @classmethod
    def _merge_upstreams(cls, data: Any) -> Any:
        """Merge field by field before validating, so that checks across fields (backoff_max >= backoff_base)
        judge the policy that will run. Trap: a local port is never inherited, it belongs to one upstream."""
        if not isinstance(data, Mapping) or not isinstance(data.get("upstreams"), Mapping):
            return data
        defaults = _raw(data.get("upstream_defaults"))
        if not isinstance(defaults, Mapping):
            return data
        defaults = {key: value for key, value in defaults.items() if key != "local_port"}
        upstreams = {name: _raw(policy) for name, policy in data["upstreams"].items()}
        merged = {n: _deep_merge(defaults, p) if isinstance(p, Mapping) else p for n, p in upstreams.items()}
        return {**data, "upstreams": merged}

    @_model_validator(mode="after")
    def _local_ports_are_distinct(self) -> Config:
        if (port := self.upstream_defaults.local_port) is not None:
            allowed = "a local port belongs to one upstream: set it as upstreams.<name>.local_port"
            raise _invalid(allowed, field=("upstream_defaults", "local_port"), value=port)
        owners: dict[int, str] = {}
        for name, policy in self.upstreams.items():
            if (port := policy.local_port) is not None and owners.setdefault(port, name) != name:
                allowed = f"already used by upstreams.{owners[port]}.local_port"
                raise _invalid(allowed, field=("upstreams", name, "local_port"), value=port)
        return self

    def upstream(self, name: str) -> UpstreamPolicy:
        """The merged policy for `name` (computed once, at load); an upstream not listed gets the defaults."""
        return self.upstreams.get(name, self.upstream_defaults)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as JSON-ready data for the admin ``/config`` page, secrets hidden."""
        data = self.model_dump(mode="json", by_alias=True)
        for section, key in (("consul", "token"), ("tls", "key")):
            if data[section][key] is not None:
                data[section][key] = REDACTED
        return data


def _raw(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True, by_alias=True)
    return {} if value is None else value  # `payments:` listed with nothing under it


def _deep_merge(base: Mapping[Any, Any], over: Mapping[Any, Any]) -> dict[Any, Any]:
    merged = dict(base)
    for key, value in over.items():
        below = merged.get(key)
        if value is None and isinstance(below, Mapping):
            continue  # `retry:` written with nothing under it keeps what is below
        merged[key] = _deep_merge(below, value) if isinstance(value, Mapping) and isinstance(below, Mapping) else value
    return merged


# ---------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans (``source: off`` and the key ``on:`` stay strings), no timestamps, no duplicate keys."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag.rsplit(":", 1)[1] not in ("bool", "timestamp")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *shared` keys may be overridden: that is what merge keys are for
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base class reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class _Layers:
    """The raw tree merged from every source, and where each key's value came from, for error messages."""

    def __init__(self) -> None:
        self.tree: dict[Any, Any] = {}
        self.origins: dict[tuple[Any, ...], str] = {}

    def set(self, path: tuple[str, ...], value: Any, source: str) -> None:
        node = self.tree
        for depth, key in enumerate(path[:-1]):
            self.origins.setdefault(path[: depth + 1], source)
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        if not path:
            self.tree = _deep_merge(self.tree, value)
        elif isinstance(value, dict) and isinstance(node.get(path[-1]), dict):
            node[path[-1]] = _deep_merge(node[path[-1]], value)
        else:
            node[path[-1]] = value
        self._record(path, value, source)

    def _record(self, path: tuple[Any, ...], value: Any, source: str) -> None:
        self.origins[path] = source
        if isinstance(value, Mapping):
            for key, child in value.items():
                self._record((*path, str(key)), child, source)

    def source_of(self, loc: tuple[Any, ...], blame: tuple[Any, ...] | None) -> str | None:
        """Where the value at `loc` (or else the `blame`d sibling's) was set, including a value an upstream
        inherited from upstream_defaults; else the nearest enclosing key's source."""
        for path in (loc, blame) if blame else (loc,):
            inherited = ("upstream_defaults", *path[2:]) if path[0] == "upstreams" else path
            for candidate in (path, inherited):
                if candidate in self.origins:
                    return self.origins[candidate]
        return next((self.origins[loc[:n]] for n in range(len(loc) - 1, 0, -1) if loc[:n] in self.origins), None)


def load_config(
    path: str | Path | None = None, *, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """Defaults < $CONSUL_* and $OTEL_* < the YAML file < $MESHLET_<SECTION>__<FIELD> < `overrides` (flags).

    `path` None means $MESHLET_CONFIG, else no file. An environment value is taken as written, except that a
    YAML flow list or mapping is parsed (``[UNAVAILABLE, INTERNAL]``) and ``""``/``null`` unset the key; names
    are case-insensitive and lowercased, so mixed-case map keys (gRPC service names in ``sidecar.routes``)
    belong in the file or in a flow mapping value. `overrides` takes nested mappings or dotted keys
    (``{"sidecar.app": "127.0.0.1:5000"}``), string values read as environment values are.
    Raises ConfigError, and nothing else, for any bad input.
    """
    env = os.environ if env is None else env
    layers = _Layers()
    _ambient_defaults(layers, env)
    file_source = None
    if path is None and env.get("MESHLET_CONFIG"):
        path, file_source = env["MESHLET_CONFIG"], "MESHLET_CONFIG"
    if path is not None:
        layers.set((), _read_file(Path(path), file_source), str(path))
    for name in sorted(env):
        if name.upper().startswith("MESHLET_") and "__" in name:
            keys = tuple(name[len("MESHLET_") :].lower().split("__"))
            layers.set(keys, _parse_text(env[name], keys, name), name)
    for key, value in (overrides or {}).items():
        keys, source = tuple(str(key).split(".")), f"flag {key}"
        layers.set(keys, _parse_text(value, keys, source) if isinstance(value, str) else value, source)
    try:
        return Config.model_validate(layers.tree)
    except ValidationError as exc:
        raise _config_error(exc, layers) from None


def _ambient_defaults(layers: _Layers, env: Mapping[str, str]) -> None:
    """The Consul CLI's and OpenTelemetry's own variables. DESIGN.md makes them defaults: the file overrides them."""
    if address := env.get("CONSUL_HTTP_ADDR"):
        if env.get("CONSUL_HTTP_SSL", "").lower() in ("1", "true") and "://" not in address:
            address = f"https://{address}"
        layers.set(("consul", "address"), address, "CONSUL_HTTP_ADDR")
    for var, keys in (
        ("CONSUL_HTTP_TOKEN", ("consul", "token")),
        ("CONSUL_CACERT", ("consul", "cacert")),
        ("OTEL_SERVICE_NAME", ("telemetry", "service_name")),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", ("telemetry", "otlp_endpoint")),
    ):
        if env.get(var):
            layers.set(keys, env[var], var)


def _read_file(path: Path, source: str | None) -> dict[Any, Any]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except OSError as exc:
        raise ConfigError("config file", str(path), f"cannot be read: {exc.strerror}", source=source) from None
    except UnicodeDecodeError:
        raise ConfigError("config file", str(path), "must be UTF-8 text", source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError("config file", str(path), f"is not valid YAML: {_yaml_problem(exc)}", source=source) from None
    if data is not None and not isinstance(data, dict):
        allowed = "must be a YAML mapping of sections: " + ", ".join(Config.model_fields)
        raise ConfigError("config file", str(path), allowed, source=source)
    return data or {}


def _parse_text(text: str, keys: tuple[str, ...], source: str) -> Any:
    """Only flow collections go through YAML, so a token, a name or a version ``1.10`` is never retyped;
    pydantic converts the strings that fill numeric and boolean fields."""
    stripped = text.strip()
    if stripped in ("", "~", "null", "Null", "NULL"):
        return None
    if re.fullmatch(r"-?(?:0|[1-9]\d*)", stripped):
        return int(stripped)  # only the canonical spelling, so "007" stays a name
    if stripped[0] not in "[{":
        return stripped
    try:
        return yaml.load(stripped, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(".".join(keys), text, f"is not valid YAML: {_yaml_problem(exc)}", source=source) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"{exc.problem} at line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}"
    return str(exc)


class _Unset:
    def __repr__(self) -> str:
        return "(not set)"


def _config_error(exc: ValidationError, layers: _Layers) -> ConfigError:
    """The first problem in an operator's words ("must be ..."), with its exact path and its source."""
    error = exc.errors()[0]
    context = error.get("ctx") or {}
    loc: tuple[Any, ...] = (*error["loc"], *context.get("field", ()))
    value = context["value"] if "field" in context else _Unset() if error["type"] == "missing" else error["input"]
    if "allowed" in context:
        allowed = context["allowed"]
    elif error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        allowed = "must be a mapping of keys to values"
    elif error["type"] in ("tuple_type", "list_type"):
        allowed = "must be a list"
    elif error["type"] == "path_type":
        allowed = "must be a file path"
    elif error["type"] == "missing":
        allowed = "is required"
    else:
        allowed = re.sub(r"^Input should be", "must be", error["msg"])
    blame = (*loc[:-1], context["blame"]) if context.get("blame") else None
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    return ConfigError(path, value, allowed, source=layers.source_of(loc, blame))
