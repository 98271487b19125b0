"""The configuration schema: one frozen pydantic model per section, strict about keys, with the checks that
span fields (ordered backoffs, distinct local ports) and the merge of each upstream over `upstream_defaults`.
Apart from loading, which only gathers raw values and explains the errors these models raise.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic import model_validator as _model_validator

from meshlet.config.edge_headers import forwardable_header, identity_header
from meshlet.config.fields import (
    DEFAULT_CONSUL_ADDRESS,
    REDACTED,
    TRUST_DOMAIN_RULE,
    AtLeastOne,
    BudgetTtl,
    ByteSize,
    DeregisterAfter,
    Duration,
    HostPort,
    MaxAttempts,
    NotNegative,
    Port,
    PositiveDuration,
    Ratio,
    StatusName,
    checked,
    invalid,
    is_trust_domain,
    method_pattern,
    normalise_consul_address,
    parsed,
    split_host_port,
)

LOOPBACK = "127.0.0.1"


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
                    raise invalid(f"unknown key; {hint}", field=(str(key),), value=data[key])
        return data


class ServiceConfig(_Section):
    name: str | None = None
    # Registered in Consul, and what mesh.serve binds unless told: None means the address the listener serves (its
    # host; 127.0.0.1 behind 0.0.0.0). Set it to what callers dial (the pod IP) when that differs.
    address: str | None = None
    tags: tuple[str, ...] = ()
    meta: dict[str, str] = Field(default_factory=dict)
    check_ttl: PositiveDuration = 10.0
    deregister_critical_after: DeregisterAfter = 60.0
    drain_grace: Duration = 10.0


class ConsulConfig(_Section):
    address: Annotated[str, parsed(normalise_consul_address)] = DEFAULT_CONSUL_ADDRESS
    token: SecretStr | None = None
    # A file holding the token ($CONSUL_HTTP_TOKEN_FILE), e.g. the sink of `consul login`. As in Consul's own
    # client, a non-empty file wins over `token`; it is read again whenever a Consul client is built.
    token_file: Path | None = None
    cacert: Path | None = None
    datacenter: str | None = None


class TlsConfig(_Section):
    """``files``: PEM paths (a relative one in the config file is read from the file's folder, one in a variable or
    flag from the working directory); ``consul``: the Connect CA's leaf and roots."""

    source: Literal["consul", "files", "off"] = "off"
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    trust_domain: str | None = None
    # Federation: callers from these trust domains are accepted too (their CAs must be in the bundle); by default a
    # server accepts only callers of its own certificate's trust domain.
    trusted_domains: tuple[Annotated[str, checked(is_trust_domain, TRUST_DOMAIN_RULE)], ...] = ()

    @_model_validator(mode="after")
    def _files_are_named(self) -> TlsConfig:
        missing = [name for name in ("cert", "key", "ca") if getattr(self, name) is None]
        if self.source == "files" and missing:
            allowed = f"a PEM file path is required when tls.source is 'files' (missing: {', '.join(missing)})"
            raise invalid(allowed, field=(missing[0],), blame="source")
        return self


class SidecarConfig(_Section):
    app: HostPort | None = None
    inbound: HostPort = "0.0.0.0:15006"
    outbound: HostPort = "127.0.0.1:15001"
    admin: HostPort = "127.0.0.1:15000"
    routes: dict[str, str] = Field(default_factory=dict)  # gRPC service name -> upstream name
    # Where the sidecar learns each method's kind (unary methods take a faster path) and idempotency_level:
    # FileDescriptorSet files (protoc --descriptor_set_out), then the app's and the upstreams' reflection services.
    descriptor_sets: tuple[Path, ...] = ()
    reflection: bool = True
    # l4: splice inbound bytes to the app after mTLS and one authorization per connection (identity-only authz).
    inbound_mode: Literal["l7", "l4"] = "l7"


class EdgeCompression(_Section):
    """Responses gzip- (or brotli-) compressed when the client accepts it and the body is at least `min_bytes`."""

    min_bytes: Annotated[int, checked(lambda n: n >= 0, "must be at least 0")] = 1024


def _is_one_url(text: str) -> bool:
    return bool(text) and not set(text) & set("<> \t,")


class DeprecationPolicy(_Section):
    """Dates for a deprecated service or method, which protos cannot carry: `since` is sent as RFC 9745's
    ``Deprecation``, `sunset` as RFC 8594's ``Sunset``, `successor` as ``Link: <...>; rel="successor-version"``."""

    since: datetime.datetime | datetime.date | None = None
    sunset: datetime.datetime | datetime.date | None = None
    successor: Annotated[str, checked(_is_one_url, "must be one URL (no spaces, commas or <>)")] | None = None

    @_model_validator(mode="after")
    def _sunset_after_since(self) -> DeprecationPolicy:
        if self.since is not None and self.sunset is not None and utc(self.sunset) <= utc(self.since):
            raise invalid(f"must be after since ({self.since})", field=("sunset",), value=self.sunset, blame="since")
        return self


def utc(moment: datetime.datetime | datetime.date) -> datetime.datetime:
    """A configured date or time as an aware UTC time: a date is its midnight, a naive time is UTC."""
    if not isinstance(moment, datetime.datetime):
        moment = datetime.datetime(moment.year, moment.month, moment.day)
    return moment.replace(tzinfo=datetime.UTC) if moment.tzinfo is None else moment.astimezone(datetime.UTC)


def _store(text: str) -> str:
    """``memory`` or ``redis://HOST:PORT/DB`` (``rediss://`` for TLS)."""
    if text == "memory":
        return text
    parsed_url = urllib.parse.urlsplit(text)
    if parsed_url.scheme not in ("redis", "rediss") or not parsed_url.hostname:
        raise ValueError("must be memory or a Redis URL such as redis://redis:6379/0 (rediss:// for TLS)")
    try:
        parsed_url.port  # noqa: B018  (raises on a port that is no number)
    except ValueError:
        raise ValueError("the port is not a number: write redis://HOST:6379/0") from None
    if parsed_url.path.strip("/") and not parsed_url.path.strip("/").isdigit():
        raise ValueError("the database after the host is a number, e.g. redis://redis:6379/0")
    return text


def _cidr(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise ValueError("must be an address or a CIDR such as 10.0.0.0/8 or fd00::/8") from None


class EdgePlan(_Section):
    """A consumer plan: a token bucket (`rate_per_s`, `burst`) and quotas over fixed calendar windows in UTC."""

    rate_per_s: Annotated[float, checked(lambda x: x > 0, "must be above 0 (leave it out: no rate limit)")] | None = (
        None
    )
    burst: AtLeastOne | None = None  # None: one second's worth, ceil(rate_per_s)
    per_minute: AtLeastOne | None = None
    per_day: AtLeastOne | None = None
    per_month: AtLeastOne | None = None

    @_model_validator(mode="after")
    def _burst_needs_a_rate(self) -> EdgePlan:
        if self.burst is not None and self.rate_per_s is None:
            raise invalid("is the token bucket's size: set rate_per_s too", field=("burst",), value=self.burst)
        return self


class EdgeLimitRoute(_Section):
    """What a request matching `match` (meshlet_edge.request_patterns) costs; 0 exempts it from the limits."""

    match: str
    cost: Annotated[int, checked(lambda n: n >= 0, "must be at least 0 (0: not limited)")] = 1


class EdgeLimits(_Section):
    """Where the plans' counters live and what a request does when that store fails; who the client is."""

    store: Annotated[str, parsed(_store)] = "memory"
    on_store_error: Literal["open", "closed"] = "open"  # open: let it through; closed: 503
    timeout: PositiveDuration = 0.05  # a store's answer, connect included, or on_store_error decides
    # Peers whose X-Forwarded-For is believed (load balancers in front of the edge); empty: the TCP peer is the client.
    trusted_proxies: tuple[Annotated[str, parsed(_cidr)], ...] = ()
    routes: tuple[EdgeLimitRoute, ...] = ()  # first match wins; the rest cost 1
    # How often one client address may fail auth (a 401): a plan of its own, charged per failure, whatever the
    # route costs; once spent, the address's requests are refused (429) before any credential is checked, so
    # guessing API keys or forcing signature checks costs it its budget. null: not limited.
    failed_credentials: EdgePlan | None = EdgePlan(rate_per_s=1.0, burst=30)


def _header_token(text: str) -> str:
    name = text.strip()
    if not name or not all(c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~") for c in name):
        raise ValueError("must be an HTTP header name such as Accept-Language")
    return name


HeaderName = Annotated[str, parsed(lambda text: _header_token(text).lower())]  # compared: lower case
HeaderToken = Annotated[str, parsed(_header_token)]  # sent: as written


class EdgeCacheRoute(_Section):
    """Answers of GET requests matching `match` kept for `ttl` (meshlet_edge.cache): per caller unless `public`,
    apart per value of each `vary` header; a successful request matching one of `invalidate` drops them all."""

    match: str
    ttl: PositiveDuration
    vary: tuple[HeaderName, ...] = ()
    public: bool = False
    invalidate: tuple[str, ...] = ()


class EdgeCache(_Section):
    """Where cached answers live: in this process (an LRU within `max_bytes`) or in a Redis every replica shares."""

    store: Annotated[str, parsed(_store)] = "memory"
    max_bytes: Annotated[ByteSize, checked(lambda n: n >= 1024, "must be at least 1KiB")] = 64 * 1024 * 1024
    timeout: PositiveDuration = 0.05  # a Redis answer, connect included; past it the request bypasses the cache
    routes: tuple[EdgeCacheRoute, ...] = ()  # first match wins; unmatched routes are not cached


class EdgeCors(_Section):
    """Cross-origin requests from browsers (the Fetch standard's CORS protocol), answered by meshlet_edge.cors."""

    allow_origins: tuple[str, ...] = ()  # exact ("https://shop.example.com"), a pattern ("https://*.example.com"), "*"
    allow_methods: tuple[str, ...] = ()  # empty: every verb of the route table
    allow_headers: tuple[HeaderName, ...] = (
        "content-type", "authorization", "x-api-key", "x-request-id", "grpc-timeout", "if-none-match", "cache-control",
    )  # fmt: skip
    expose_headers: tuple[HeaderToken, ...] = (
        "X-Request-Id", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "Retry-After", "ETag",
        "Cache-Status", "Deprecation", "Sunset", "Link",
    )  # fmt: skip
    allow_credentials: bool = False
    max_age: Duration = 600.0  # how long a browser may keep a preflight's answer

    @_model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> EdgeCors:
        if self.allow_credentials and "*" in self.allow_origins:
            allowed = 'cannot be "*" with allow_credentials (browsers refuse it): list the origins'
            raise invalid(allowed, field=("allow_origins",), value=list(self.allow_origins), blame="allow_credentials")
        return self


JwtAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
NotNegativeDuration = Annotated[Duration, checked(lambda s: s >= 0, "must be a duration of at least 0")]


class JwtIssuer(_Section):
    """One issuer whose bearer JWTs are accepted (``edge.auth.issuers``, ``inbound.jwt.issuers``): its ``iss``, the
    ``aud`` values meant for us, and where its public keys are: ``jwks_uri`` (HTTPS) or ``jwks_file``. Only
    asymmetric algorithms exist here: an HMAC secret is never configured, so never confused with a public key."""

    issuer: Annotated[str, checked(bool, "must name the issuer (the tokens' iss claim)")]
    audiences: Annotated[tuple[str, ...], checked(bool, "must list at least one audience (the tokens' aud)")]
    jwks_uri: Annotated[str, checked(lambda u: u.startswith("https://"), "must be an https:// URL")] | None = None
    jwks_file: Path | None = None
    ca_file: Path | None = None  # trusted beside the system's CAs when fetching jwks_uri
    algorithms: Annotated[tuple[JwtAlgorithm, ...], checked(bool, "must allow at least one algorithm")] = (
        "RS256",
        "ES256",
        "EdDSA",
    )
    leeway: NotNegativeDuration = 30.0  # clock skew allowed on exp, nbf and iat
    jwks_refresh: PositiveDuration = 300.0  # keys refetched this often (in the background)
    jwks_min_refetch: NotNegativeDuration = 10.0  # an unknown kid refetches at most this often

    @_model_validator(mode="after")
    def _one_key_source(self) -> JwtIssuer:
        if (self.jwks_uri is None) == (self.jwks_file is None):
            allowed = "exactly one of jwks_uri (an https:// URL) or jwks_file (a JWKS file) is required"
            raise invalid(allowed, field=("jwks_uri",), value=self.jwks_uri)
        return self


class EdgeApiKeys(_Section):
    """Where API keys live, each as the SHA-256 hex of the key -> {owner, plan, scopes}: a YAML/JSON file, or Consul
    KV under ``meshlet/edge/keys/<hash>`` (watched: a key added or deleted there counts within a second or two)."""

    source: Literal["file", "consul"]
    path: Path | None = None
    header: str = "x-api-key"
    query: str | None = None  # a query parameter also read for the key (e.g. api_key); off by default
    prefix: str = "meshlet/edge/keys/"

    @_model_validator(mode="after")
    def _file_is_named(self) -> EdgeApiKeys:
        if self.source == "file" and self.path is None:
            raise invalid("a keys file is required when source is 'file'", field=("path",), blame="source")
        return self


class EdgeAuthRoute(_Section):
    """A rule of ``edge.auth.routes``: which requests (``match``), what proves the caller, and what it must hold."""

    match: str
    auth: Literal["none", "jwt", "api_key", "any"]
    scopes: tuple[str, ...] = ()
    claims: dict[str, str] = Field(default_factory=dict)


class EdgeAuth(_Section):
    """Who is calling: bearer JWTs of the `issuers`, API keys, and per route which is required (first match wins;
    a request no rule matches needs nothing). The verified caller goes upstream as ``x-meshlet-subject`` and the
    headers `claims_to_headers` names; those headers are never taken from the client."""

    issuers: tuple[JwtIssuer, ...] = ()
    api_keys: EdgeApiKeys | None = None
    routes: tuple[EdgeAuthRoute, ...] = ()
    claims_to_headers: dict[str, Annotated[str, parsed(identity_header)]] = Field(default_factory=dict)
    realm: str = "meshlet-edge"

    @_model_validator(mode="after")
    def _what_routes_need_exists(self) -> EdgeAuth:
        for index, route in enumerate(self.routes):
            if route.auth == "jwt" and not self.issuers:
                raise invalid(
                    "needs edge.auth.issuers", field=("routes", str(index), "auth"), value="jwt", blame="issuers"
                )
            if route.auth == "api_key" and self.api_keys is None:
                allowed = "needs edge.auth.api_keys"
                raise invalid(allowed, field=("routes", str(index), "auth"), value="api_key", blame="api_keys")
            if route.auth == "any" and not self.issuers and self.api_keys is None:
                allowed = "needs edge.auth.issuers or edge.auth.api_keys"
                raise invalid(allowed, field=("routes", str(index), "auth"), value="any", blame="issuers")
        return self


class EdgeConsumers(_Section):
    """How a verified caller is named and planned: the JWT claim that names it (API keys name their owner), and the
    claim that gives its plan (an API key's own plan otherwise)."""

    claim: str = "sub"
    plan_claim: str | None = None


class EdgeConfig(_Section):
    """``meshlet-edge``: HTTP/JSON in front of the mesh, routed by the protos' ``google.api.http`` annotations."""

    listen: HostPort = "0.0.0.0:8080"
    admin: HostPort = "127.0.0.1:15000"  # /ready and /live
    services: dict[str, str] = Field(default_factory=dict)  # gRPC service name -> upstream name
    # FileDescriptorSet files (protoc --include_imports --descriptor_set_out) that describe those services.
    descriptor_sets: tuple[Path, ...] = ()
    # Or: learn them at start from each upstream's reflection service, waiting at most reflection_timeout.
    reflection: bool = False
    reflection_timeout: PositiveDuration = 30.0
    # Request headers passed upstream as metadata (lowercase keys); none by default: sending a client's header
    # (Authorization, a cookie) to an upstream is a trust decision the operator makes by naming it.
    forward_headers: tuple[Annotated[str, parsed(forwardable_header)], ...] = ()
    max_body_bytes: AtLeastOne = 1024 * 1024  # a request body, after decompression: 413 past it
    compression: EdgeCompression = EdgeCompression()
    # Check each request against its proto's buf.validate constraints before it leaves: a violation is a 400 with
    # a google.rpc.BadRequest (field, rule id, message). On by default: the front door is where bad input stops.
    validate_requests: bool = Field(default=True, alias="validate")
    docs: bool = True  # /openapi.json, /openapi.yaml and /docs on the listener
    # gRPC service or method full name -> its deprecation dates (proto `deprecated = true` needs none to be sent).
    deprecations: dict[str, DeprecationPolicy] = Field(default_factory=dict)
    auth: EdgeAuth = EdgeAuth()  # who is calling (meshlet_edge.auth)
    consumers: EdgeConsumers = EdgeConsumers()
    # Consumer plans (rate limits and quotas); a caller whose credentials name no plan is on `default`.
    plans: dict[str, EdgePlan] = Field(default_factory=dict)
    limits: EdgeLimits = EdgeLimits()

    @_model_validator(mode="after")
    def _plans_have_a_default(self) -> EdgeConfig:
        if self.plans and "default" not in self.plans:
            allowed = "needs a default plan (the plan of callers whose credentials name none): add plans.default"
            raise invalid(allowed, field=("plans",), value=sorted(self.plans))
        return self

    cache: EdgeCache = EdgeCache()  # answers kept and served again without an upstream call
    cors: EdgeCors | None = None  # None: no CORS headers, and an OPTIONS preflight is a 405 as any unrouted verb

    @_model_validator(mode="after")
    def _one_descriptor_source(self) -> EdgeConfig:
        if self.reflection and self.descriptor_sets:
            allowed = "is one descriptor source, edge.descriptor_sets the other: use one of them, not both"
            raise invalid(allowed, field=("reflection",), value=True, blame="descriptor_sets")
        return self


class InboundConfig(_Section):
    """What every server of this process (``mesh.server()``, the sidecar's inbound port) checks of a call."""

    # Check each request against its proto's buf.validate constraints before the handler (or the app) sees it:
    # a violation is INVALID_ARGUMENT with a google.rpc.BadRequest. Off by default: it decodes every request.
    validate_requests: bool = Field(default=False, alias="validate")
    # Require an end user's bearer JWT on the methods its rules name (Istio's RequestAuthentication); off by default.
    jwt: InboundJwt | None = None


class InboundJwtRule(_Section):
    methods: Annotated[tuple[Annotated[str, method_pattern(allow_any=True)], ...], checked(bool, "must list a method")]
    scopes: tuple[str, ...] = ()
    claims: dict[str, str] = Field(default_factory=dict)


class InboundJwt(_Section):
    """``inbound.jwt``: calls to a method the first matching rule names must carry ``authorization: Bearer <JWT>``
    from one of `issuers`, holding the rule's scopes and claims; methods no rule names are not checked."""

    issuers: Annotated[tuple[JwtIssuer, ...], checked(bool, "must list at least one issuer")]
    rules: tuple[InboundJwtRule, ...] = (InboundJwtRule(methods=("*",)),)


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
    idempotent: tuple[Annotated[str, method_pattern(allow_any=False)], ...] = ()
    replay_buffer_bytes: Annotated[int, checked(lambda n: n >= 0, "must be at least 0")] = 65536

    @_model_validator(mode="after")
    def _backoff_is_ordered(self) -> RetryPolicy:
        if self.backoff_max < self.backoff_base:
            allowed = f"must be at least backoff_base ({self.backoff_base}s)"
            raise invalid(allowed, field=("backoff_max",), value=self.backoff_max, blame="backoff_base")
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
            raise invalid(allowed, field=("reset_timeout_max",), value=self.reset_timeout_max, blame="reset_timeout")
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
    compression: Literal["none", "gzip"] = "none"  # gRPC message compression on the mesh's channels to it


def _is_source(source: str) -> bool:
    parts = source.split("/")
    return len(parts) <= 3 and all(parts)


class AuthzRule(_Section):
    # [<partition>/][<namespace>/]<service> (Consul's CLI spelling; each left out is "default"); service may be "*"
    from_: Annotated[str, checked(_is_source, "must be [<partition>/][<namespace>/]<service>, service or '*'")] = Field(
        alias="from"
    )
    to: str
    methods: tuple[Annotated[str, method_pattern(allow_any=True)], ...] = ("*",)
    action: Literal["allow", "deny"]
    # A source of a federated trust domain (one of tls.trusted_domains); unset: our own trust domain
    trust_domain: Annotated[str, checked(is_trust_domain, TRUST_DOMAIN_RULE)] | None = None


class AuthzConfig(_Section):
    default: Literal["allow", "deny"] = "allow"
    source: Literal["consul", "local"] = "local"
    fail_open: bool = False  # when intentions cannot be read: allow (True) or deny (False)
    refresh_interval: PositiveDuration = 10.0  # consul: decisions asked again at least this often (a safety net)
    rules: tuple[AuthzRule, ...] = ()


class CallerRateLimit(_Section):
    rate_per_s: Annotated[float, checked(lambda x: x > 0, "must be above 0 (unset means no limit)")] | None = None
    burst: AtLeastOne | None = None  # None: one second's worth, ceil(rate_per_s)


class RateLimitConfig(_Section):
    """Inbound token buckets. `per_caller`: one bucket per caller identity for all its calls. `per_method`:
    keyed by method pattern (``"/pkg.Service/Method"``, ``"/pkg.Service/*"`` or ``"*"``), one bucket per caller
    *per method* the pattern matches; the most specific pattern applies (exact, then service, then ``*``), and
    an entry without `rate_per_s` exempts its methods from the less specific ones. A call must pass both."""

    per_caller: CallerRateLimit = CallerRateLimit()
    per_method: dict[Annotated[str, method_pattern(allow_any=True)], CallerRateLimit] = Field(default_factory=dict)


class TelemetryConfig(_Section):
    service_name: str | None = None  # default: $OTEL_SERVICE_NAME; None: use service.name
    otlp_endpoint: str | None = None  # default: $OTEL_EXPORTER_OTLP_ENDPOINT; None keeps traces in process
    sample_ratio: Ratio = 1.0
    metrics_port: Port | None = None  # the SDK's opt-in /metrics port (the sidecar serves /metrics on its admin)
    metrics_host: str = "127.0.0.1"  # what that port binds; 0.0.0.0 for Prometheus (and probes) in a pod
    access_log: bool = False  # a JSON line per call: opt-in, as Istio, Linkerd and Consul ship it (it costs CPU)
    span_file: Path | None = None  # spans also written here as JSON lines, one file per process (`meshlet trace`)


class Config(_Section):
    """The whole configuration. `upstreams` holds each listed upstream already merged over `upstream_defaults`."""

    service: ServiceConfig = ServiceConfig()
    consul: ConsulConfig = ConsulConfig()
    tls: TlsConfig = TlsConfig()
    sidecar: SidecarConfig = SidecarConfig()
    edge: EdgeConfig = EdgeConfig()
    inbound: InboundConfig = InboundConfig()
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
        merged = {n: deep_merge(defaults, p) if isinstance(p, Mapping) else p for n, p in upstreams.items()}
        return {**data, "upstreams": merged}

    @_model_validator(mode="after")
    def _local_ports_are_distinct(self) -> Config:
        if (port := self.upstream_defaults.local_port) is not None:
            allowed = "a local port belongs to one upstream: set it as upstreams.<name>.local_port"
            raise invalid(allowed, field=("upstream_defaults", "local_port"), value=port)
        owners: dict[int, str] = {}
        for name, policy in self.upstreams.items():
            if (port := policy.local_port) is not None and owners.setdefault(port, name) != name:
                allowed = f"already used by upstreams.{owners[port]}.local_port"
                raise invalid(allowed, field=("upstreams", name, "local_port"), value=port)
        return self

    @_model_validator(mode="after")
    def _rules_name_federated_domains(self) -> Config:
        """A rule's trust_domain must be one tls.trusted_domains federates: callers of any other are refused before
        authorization, so the rule could never match."""
        for index, rule in enumerate(self.authz.rules):
            if rule.trust_domain is not None and rule.trust_domain not in self.tls.trusted_domains:
                allowed = (
                    f"must be one of tls.trusted_domains ({', '.join(self.tls.trusted_domains) or 'none'}): add "
                    f"{rule.trust_domain!r} there to federate it, or leave trust_domain out for our own"
                )
                raise invalid(allowed, field=("authz", "rules", str(index), "trust_domain"), value=rule.trust_domain)
        return self

    @_model_validator(mode="after")
    def _authz_follows_the_ca(self) -> Config:
        """Secure by default: with certificates from Consul, authorization follows Consul's intentions unless
        ``authz.source`` says otherwise. Local rules written without a source would leave it unclear which
        of the two is meant (and a deny intention unenforced), so they must name it."""
        authz = self.authz
        if self.tls.source != "consul" or "source" in authz.model_fields_set:
            return self
        if authz.rules:
            allowed = (
                "must be set when tls.source is consul and authz.rules are given: 'local' enforces these rules, "
                "'consul' follows Consul's intentions (the default with tls.source consul) and ignores them"
            )
            raise invalid(allowed, field=("authz", "source"), value="(not set)")
        # Frozen: set once, here; source stays out of the fields set, so the start log can say it was the default.
        chosen = AuthzConfig.model_construct(authz.model_fields_set, **{**dict(authz), "source": "consul"})
        object.__setattr__(self, "authz", chosen)
        return self

    @_model_validator(mode="after")
    def _plaintext_inbound_stays_local(self) -> Config:
        """With ``tls.source: off`` the sidecar's inbound port serves plaintext to callers it cannot identify:
        unless ``sidecar.inbound`` is set explicitly, it listens on loopback only (the sidecar says so at start)."""
        sidecar = self.sidecar
        if self.tls.source != "off" or "inbound" in sidecar.model_fields_set:
            return self
        _, port = split_host_port(sidecar.inbound)
        local = {**dict(sidecar), "inbound": f"{LOOPBACK}:{port}"}
        object.__setattr__(self, "sidecar", SidecarConfig.model_construct(sidecar.model_fields_set, **local))
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
        if data["telemetry"]["otlp_endpoint"] is not None:
            data["telemetry"]["otlp_endpoint"] = _without_credentials(data["telemetry"]["otlp_endpoint"])
        data["edge"]["limits"]["store"] = _without_credentials(data["edge"]["limits"]["store"])  # redis://:pw@host
        return data


def _without_credentials(url: str) -> str:
    """`url` with any ``user:password@`` and any query string replaced, so that /config shows where traces go but not
    how to log in. The userinfo is all before the last ``@``, since a token that was not percent-encoded may hold
    ``/``, ``?`` or ``#`` (base64 does); some collectors take an API key in the query."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", scheme
    if "@" in rest:
        rest = f"{REDACTED}@{rest.rpartition('@')[2]}"
    where, query, _ = rest.partition("?")
    return f"{scheme}{sep}{where}?{REDACTED}" if query else f"{scheme}{sep}{rest}"


def path_fields(model: type[BaseModel] = Config, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The YAML key paths of every field that holds a file path (or a list of them), in every section; ``*`` in a
    path stands for each item of a list of sections (``edge.auth.issuers.*.jwks_file``)."""
    for name, field in model.model_fields.items():
        key = (*prefix, field.alias or name)
        annotation = field.annotation
        leaves = _leaf_types(annotation)
        sections = [t for t in leaves if isinstance(t, type) and issubclass(t, BaseModel)]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from path_fields(annotation, key)
        elif len(sections) == 1 and leaves <= {sections[0], type(None), Ellipsis}:  # optional, or a list of them
            yield from path_fields(sections[0], (*key, "*") if Ellipsis in leaves else key)
        elif Path in leaves:
            yield key


def _leaf_types(annotation: Any) -> set[Any]:
    """``Path | None`` -> {Path, NoneType}; ``tuple[Path, ...]`` -> {Path, Ellipsis}; a plain type -> itself."""
    args = get_args(annotation)
    return set().union(*map(_leaf_types, args)) if args else {annotation}


def _raw(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True, by_alias=True)
    return {} if value is None else value  # `payments:` listed with nothing under it


def deep_merge(base: Mapping[Any, Any], over: Mapping[Any, Any]) -> dict[Any, Any]:
    merged = dict(base)
    for key, value in over.items():
        below = merged.get(key)
        if value is None and isinstance(below, Mapping):
            continue  # `retry:` written with nothing under it keeps what is below
        merged[key] = deep_merge(below, value) if isinstance(value, Mapping) and isinstance(below, Mapping) else value
    return merged
