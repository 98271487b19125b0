"""Intentions: which source service may call which destination service, optionally per gRPC method, and the
`Authorizer` seam that the inbound Authorize stage asks on every call.

Rules come from the ``authz`` section (``source: local``); `consul_authz` answers the same question from
Consul's intentions. Order of evaluation, most specific first; the first rule that matches decides:

1. the (source, destination) pair, as Consul ranks intentions: exact -> exact, ``*`` -> exact,
   exact -> ``*``, ``*`` -> ``*``;
2. within one pair, the method pattern: an exact method, then ``/pkg.Service/*``, then ``*``;
3. within one pair and one pattern, deny before allow, so two conflicting rules can only deny.

No rule matching means `default`. Trap: unlike one Consul L7 intention, which governs its pair for every
method, a pair's rules here govern only the methods they name: another method of the same pair falls
through to the less specific pairs and then to the default. A caller without an identity (mTLS off) matches
only rules whose source is ``*``.

A source names a service of one namespace and admin partition, as Consul's intention sources carry a SourceNS and
a SourcePartition, spelt as Consul's CLI does: ``[<partition>/][<namespace>/]<service>``, each left out meaning
``default``. So ``gateway`` and ``*`` never match a caller of namespace ``sandbox`` or partition ``evil``, whose
SPIFFE IDs differ only there; ``sandbox/gateway`` or ``sandbox/*`` does. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from meshlet.call import method_matches
from meshlet.security.identity import DEFAULT_NAMESPACE, DEFAULT_PARTITION, InvalidSpiffeId, SpiffeId

if TYPE_CHECKING:
    from meshlet.config import AuthzConfig

WILDCARD = "*"
MAX_REMEMBERED = 4096  # (caller, method) decisions kept by IntentionsAuthorizer; the first in is the first out

Action = Literal["allow", "deny"]


@dataclass(frozen=True, slots=True)
class Decision:
    """May the call go ahead, and why: the reason names the rule (or the default) that decided."""

    allowed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Intention:
    """`source` may (allow) or may not (deny) call `methods` of `destination`. Names are service names or ``*``;
    methods are patterns for `meshlet.call.method_matches`."""

    source: str
    destination: str
    methods: tuple[str, ...]
    action: Action

    def __post_init__(self) -> None:
        source_key(self.source)  # raises ValueError for a malformed source
        if self.action not in ("allow", "deny"):
            raise ValueError(f"an intention's action must be 'allow' or 'deny', got {self.action!r}")
        if not self.methods:
            raise ValueError(f"intention {self.source} -> {self.destination} names no method: use ('*',) for all")

    def __str__(self) -> str:
        methods = "" if self.methods == (WILDCARD,) else f" [{', '.join(self.methods)}]"
        return f"{self.source} -> {self.destination}{methods} ({self.action})"


class Intentions:
    """A rule set and its default, sorted once into evaluation order (see the module docstring)."""

    __slots__ = ("_ordered", "default", "rules")

    def __init__(self, rules: Iterable[Intention], default: Action = "allow") -> None:
        if default not in ("allow", "deny"):
            raise ValueError(f"the default must be 'allow' or 'deny', got {default!r}")
        self.rules = tuple(rules)
        self.default = default
        # One (rule, pattern) entry per pattern, so a rule naming an exact method and a whole service ranks each.
        entries = [(rule, pattern, source_key(rule.source)) for rule in self.rules for pattern in rule.methods]
        self._ordered: Sequence[tuple[Intention, str, SourceKey]] = sorted(entries, key=_rank)

    @classmethod
    def from_config(cls, authz: AuthzConfig) -> Intentions:
        return cls(
            (Intention(rule.from_, rule.to, tuple(rule.methods), rule.action) for rule in authz.rules),
            default=authz.default,
        )

    def decide(self, source: SpiffeId | str | None, destination: str, method: str) -> Decision:
        """Whether `source` (a caller's identity, or the name of a service of the default namespace and partition;
        None for a caller without an identity) may call `method` (``/pkg.Service/Method``) on `destination`."""
        if source is None:
            caller: SourceKey | None = None
        elif isinstance(source, SpiffeId):
            caller = (source.partition or DEFAULT_PARTITION, source.namespace, source.service)
        else:
            caller = (DEFAULT_PARTITION, DEFAULT_NAMESPACE, source)
        for rule, pattern, key in self._ordered:
            if (
                (key == _ANYONE if caller is None else key[:2] == caller[:2] and key[2] in (WILDCARD, caller[2]))
                and rule.destination in (WILDCARD, destination)
                and method_matches(method, pattern)
            ):
                return Decision(rule.action == "allow", f"matched intention {rule}")
        if source is None:
            return Decision(self.default == "allow", f"the caller has no identity and authz.default is {self.default}")
        return Decision(self.default == "allow", f"no intention matches and authz.default is {self.default}")

    def __repr__(self) -> str:
        return f"<Intentions {len(self.rules)} rules, default {self.default}>"


SourceKey = tuple[str, str, str]  # (partition, namespace, service or "*")
_ANYONE: SourceKey = (DEFAULT_PARTITION, DEFAULT_NAMESPACE, WILDCARD)  # "*": all a caller without identity matches


def source_key(source: str) -> SourceKey:
    """``[<partition>/][<namespace>/]<service>`` -> (partition, namespace, service); ValueError when malformed."""
    parts = source.split("/")
    if len(parts) > 3 or not all(parts):
        raise ValueError(
            f"an intention's source must be [<partition>/][<namespace>/]<service> (service may be '*'), got {source!r}"
        )
    defaults = (DEFAULT_PARTITION, DEFAULT_NAMESPACE)[: 3 - len(parts)]
    partition, namespace, service = (*defaults, *parts)
    return partition, namespace, service


def _rank(entry: tuple[Intention, str, SourceKey]) -> tuple[int, int, int]:
    rule, pattern, key = entry
    pair = (rule.destination == WILDCARD) * 2 + (key[2] == WILDCARD)  # Consul's precedence 9, 8, 6, 5
    specificity = 2 if pattern == WILDCARD else 1 if pattern.endswith("/*") else 0
    return pair, specificity, rule.action != "deny"


class Authorizer(Protocol):
    """What the Authorize stage asks. `decide_now` answers from memory on the hot path; only when it returns
    None (a pair not seen yet, for an authorizer that must ask elsewhere) does the stage await `decide`."""

    def decide_now(self, peer_uri: str | None, destination: str, method: str) -> Decision | None: ...

    async def decide(self, peer_uri: str | None, destination: str, method: str) -> Decision: ...

    def remedy(self, source: str, destination: str, method: str) -> str:
        """What an operator does to allow the call: shown in the PERMISSION_DENIED message."""
        ...


class IntentionsAuthorizer:
    """The local rules as an Authorizer: the caller's service is read from its SPIFFE ID, and decisions are
    remembered per (caller, destination, method), so a call from a known caller costs one dict lookup."""

    __slots__ = ("_decided", "intentions")

    def __init__(self, intentions: Intentions) -> None:
        self.intentions = intentions
        self._decided: dict[tuple[str | None, str, str], Decision] = {}

    def decide_now(self, peer_uri: str | None, destination: str, method: str) -> Decision:
        key = (peer_uri, destination, method)
        decision = self._decided.get(key)
        if decision is None:
            decision = self.intentions.decide(identity_of(peer_uri), destination, method)
            if len(self._decided) >= MAX_REMEMBERED:
                del self._decided[next(iter(self._decided))]
            self._decided[key] = decision
        return decision

    async def decide(self, peer_uri: str | None, destination: str, method: str) -> Decision:
        return self.decide_now(peer_uri, destination, method)

    def remedy(self, source: str, destination: str, method: str) -> str:
        rule = f"{{from: {source}, to: {destination}, methods: ['{method}'], action: allow}}"
        return f"to allow it, add {rule} to authz.rules (a deny rule for the same pair and method wins over it)"

    def __repr__(self) -> str:
        return f"<IntentionsAuthorizer {self.intentions!r}>"


def source_name(identity: SpiffeId) -> str:
    """How an intention's source names `identity`: ``gateway``, ``sandbox/gateway``, ``evil/default/gateway``."""
    if identity.partition:
        return f"{identity.partition}/{identity.namespace}/{identity.service}"
    if identity.namespace != DEFAULT_NAMESPACE:
        return f"{identity.namespace}/{identity.service}"
    return identity.service


def identity_of(peer_uri: str | None) -> SpiffeId | None:
    """The caller's SPIFFE ID; None without one, or when it names no service (cached per URI)."""
    if peer_uri is None:
        return None
    try:
        return SpiffeId.parse(peer_uri)
    except InvalidSpiffeId:
        return None


def service_of(peer_uri: str | None) -> str | None:
    """The service name in a caller's SPIFFE ID; None without one, or when it names no service."""
    if peer_uri is None:
        return None
    try:
        return SpiffeId.parse(peer_uri).service
    except InvalidSpiffeId:
        return None
