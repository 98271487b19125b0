"""Consul's service intentions: who may call whom. The rules live here, pure: validation with Consul's error
texts, the precedence order, matching, and the decision ``/v1/agent/connect/authorize`` and
``/v1/connect/intentions/check`` answer with. ``api/connect.py`` does the HTTP.

Consul (CE, since 1.9) stores intentions as one ``service-intentions`` config entry per destination whose
``Sources`` keep their insertion order; error texts name a source by that position (``Sources[1].Action``),
so the store keeps the same order. Namespaces are fixed to ``default``, as in Consul CE.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from meshlet.devagent.raft import RaftIndex

WILDCARD = "*"
NAMESPACE = "default"
DEFAULT_REASON = "Default behavior configured by ACLs"
MAX_DESCRIPTION = 512  # Consul's metaValueMaxLength
PARTIAL_WILDCARD = "wildcard character '*' cannot be used with partial values"

MatchBy = Literal["source", "destination"]


class IntentionError(ValueError):
    """A write Consul refuses; the text is Consul's and the HTTP answer is a plain 500."""


@dataclass(frozen=True)
class Intention:
    """One source -> destination rule. L7 intentions carry `permissions` and no `action`."""

    source: str
    destination: str
    action: str
    permissions: tuple[dict[str, Any], ...] = ()
    description: str = ""
    source_type: str = "consul"
    legacy_id: str = ""  # set only by the legacy ``POST /v1/connect/intentions``
    legacy_meta: dict[str, str] = field(default_factory=dict)
    created_at: str = ""  # legacy only, RFC 3339
    updated_at: str = ""
    create_index: int = 0
    modify_index: int = 0

    @property
    def precedence(self) -> int:
        return precedence(self.source, self.destination)

    @property
    def is_l7(self) -> bool:
        return bool(self.permissions)

    def describe(self) -> str:
        """Consul's ``Intention.String()``, which authorize quotes in its reason."""
        id_part = f"ID: {self.legacy_id}, " if self.legacy_id else ""
        detail = f"Permissions: {len(self.permissions)}" if self.is_l7 else f"Action: {self.action.upper()}"
        return (
            f"{NAMESPACE}/{self.source} => {NAMESPACE}/{self.destination} "
            f"({id_part}Precedence: {self.precedence}, {detail})"
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.legacy_id:
            out["ID"] = self.legacy_id
        out["Description"] = self.description
        out["SourceNS"] = NAMESPACE
        out["SourceName"] = self.source
        out["DestinationNS"] = NAMESPACE
        out["DestinationName"] = self.destination
        out["SourceType"] = self.source_type
        if self.action:
            out["Action"] = self.action
        if self.permissions:
            out["Permissions"] = list(self.permissions)
        out["Meta"] = dict(self.legacy_meta)
        out["Precedence"] = self.precedence
        if self.legacy_id:
            out["CreatedAt"] = self.created_at
            out["UpdatedAt"] = self.updated_at
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out


@dataclass(frozen=True)
class Decision:
    """What authorize answers: allowed or not, why, and the intention that decided (None: the default)."""

    allowed: bool
    reason: str
    intention: Intention | None = None


def precedence(source: str, destination: str) -> int:
    """Consul's ``UpdatePrecedence`` with namespaces fixed: exact->exact 9, *->exact 8, exact->* 6, *->* 5."""
    ceiling = 9 if destination != WILDCARD else 6
    return ceiling - (0 if source != WILDCARD else 1)


def in_precedence_order(intentions: Iterable[Intention]) -> list[Intention]:
    """Highest precedence first; ties broken by (source, destination) as Consul's sorter does."""
    return sorted(intentions, key=lambda i: (-i.precedence, i.source, i.destination))


def decide(
    intentions: Iterable[Intention], source: str, destination: str, *, source_namespace: str = NAMESPACE
) -> Decision:
    """The first intention (in precedence order) for `destination` whose source matches decides; an L7
    intention denies, since the caller's request is unknown at connect time. None matching: allow, the
    default with ACLs off (dev mode). A caller from another namespace matches no CE intention."""
    for intention in match(intentions, "destination", destination):
        if source_namespace != NAMESPACE or intention.source not in (WILDCARD, source):
            continue
        if intention.is_l7:
            return Decision(False, f"Matched L7 intention: {intention.describe()}", intention)
        allowed = intention.action == "allow"
        return Decision(allowed, f"Matched L4 intention: {intention.describe()}", intention)
    return Decision(True, DEFAULT_REASON)


def match(intentions: Iterable[Intention], by: MatchBy, name: str) -> list[Intention]:
    """The intentions that apply to `name` on side `by`, wildcards included, in evaluation order."""
    names = (name, WILDCARD)
    if by == "source":
        return in_precedence_order(i for i in intentions if i.source in names)
    return in_precedence_order(i for i in intentions if i.destination in names)


def parse_name(text: str, *, allow_peer: bool = False) -> str:
    """A service name from a query parameter (``name``, ``ns/name``, ``partition/ns/name``); CE drops the
    namespace and partition. Raises with Consul's text (without the "source %q is invalid: " prefix)."""
    if text.startswith("peer:") and not allow_peer:
        raise IntentionError("cannot specify a peer here")
    parts = text.split("/")
    if len(parts) > 3:
        raise IntentionError("input can contain at most two '/'")
    if len(parts) == 1 and parts[0].startswith("peer:"):
        raise IntentionError("need to specify the service name as well")
    return parts[-1]


class Intentions:
    """Every intention, keyed by (source, destination) and grouped per destination in insertion order."""

    def __init__(self, index: RaftIndex) -> None:
        self._index = index
        self._by_destination: dict[str, dict[str, Intention]] = {}
        self.modify_index = 0  # the index of the last write, deletions included: what blocking reads watch

    # ------------------------------------------------------------------ reads

    def get(self, source: str, destination: str) -> Intention | None:
        return self._by_destination.get(destination, {}).get(source)

    def all(self) -> list[Intention]:
        return in_precedence_order(i for sources in self._by_destination.values() for i in sources.values())

    def match(self, by: MatchBy, name: str) -> list[Intention]:
        return match(self.all(), by, name)

    def decide(self, source: str, destination: str, *, source_namespace: str = NAMESPACE) -> Decision:
        return decide(self.all(), source, destination, source_namespace=source_namespace)

    # ------------------------------------------------------------------ writes

    def upsert(
        self,
        source: str,
        destination: str,
        *,
        action: str = "",
        permissions: Iterable[dict[str, Any]] = (),
        description: str = "",
        source_type: str = "",
        meta: dict[str, str] | None = None,
    ) -> Intention:
        """``PUT /v1/connect/intentions/exact``: create or replace; Meta lives on the config entry in Consul,
        so a new-style write may not set it."""
        sources = self._by_destination.get(destination, {})
        if meta:
            if not sources:
                raise IntentionError("Meta must not be specified")
            raise IntentionError("Meta must not be specified, or should be unchanged during an update.")
        candidate = Intention(
            source=source,
            destination=destination,
            action=action,
            permissions=tuple(permissions),
            description=description,
            source_type=source_type or "consul",
        )
        merged = [_without_legacy_id(s) for s in _replaced(sources, candidate)]
        _validate_entry(destination, merged, legacy_write=False)
        return self._commit(destination, merged)[source]

    def create_legacy(
        self,
        intention_id: str,
        now_rfc3339: str,
        *,
        source: str,
        destination: str,
        action: str = "",
        permissions: Iterable[dict[str, Any]] = (),
        description: str = "",
        source_type: str = "",
        meta: dict[str, str] | None = None,
    ) -> Intention:
        """The deprecated ``POST /v1/connect/intentions``: create only, identified by a UUID, Meta allowed.
        Refused for a destination already written through the new API (its sources lost their IDs)."""
        candidate = Intention(
            source=source,
            destination=destination,
            action=action,
            permissions=tuple(permissions),
            description=description,
            source_type=source_type or "consul",
            legacy_id=intention_id,
            legacy_meta=dict(meta or {}),
            created_at=now_rfc3339,
            updated_at=now_rfc3339,
        )
        _validate_legacy(candidate)
        sources = self._by_destination.get(destination, {})
        if any(not s.legacy_id for s in sources.values()):
            raise IntentionError(
                f'cannot use legacy intention API to edit intentions with a destination of "{destination}" '
                "after editing them via a service-intentions config entry"
            )
        merged = [*sources.values(), candidate]
        _validate_entry(destination, merged, legacy_write=True)
        return self._commit(destination, merged)[source]

    def delete(self, source: str, destination: str) -> None:
        """Deleting an intention that does not exist is a successful no-op, as in Consul."""
        sources = self._by_destination.get(destination, {})
        if source in sources:
            self._commit(destination, [_without_legacy_id(s) for s in sources.values() if s.source != source])

    def _commit(self, destination: str, sources: list[Intention]) -> dict[str, Intention]:
        """Store a destination's new source list. As in Consul's config entry, its sources share one
        CreateIndex (the entry's) and one ModifyIndex (this write's)."""
        index = self._index.advance()
        previous = self._by_destination.pop(destination, {})
        created = next(iter(previous.values())).create_index if previous else index
        entry = {s.source: replace(s, create_index=created, modify_index=index) for s in sources}
        if entry:
            self._by_destination[destination] = entry
        self.modify_index = index
        return entry

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        rows = [asdict(i) for sources in self._by_destination.values() for i in sources.values()]
        return {"modify_index": self.modify_index, "intentions": rows}

    def restore(self, data: dict[str, Any]) -> None:
        self._by_destination = {}
        for row in data.get("intentions", []):
            intention = Intention(**{**row, "permissions": tuple(row.get("permissions", ()))})
            self._by_destination.setdefault(intention.destination, {})[intention.source] = intention
        self.modify_index = int(data.get("modify_index", 0))


def _replaced(sources: dict[str, Intention], candidate: Intention) -> Iterable[Intention]:
    """The destination's sources with `candidate` in its place (or appended), as Consul's upsert does."""
    yield from (candidate if s.source == candidate.source else s for s in sources.values())
    if candidate.source not in sources:
        yield candidate


def _without_legacy_id(intention: Intention) -> Intention:
    """A new-style write clears the legacy fields of every source of the entry but their Meta, which then
    fails validation (Consul's warning about losing it)."""
    return replace(intention, legacy_id="", created_at="", updated_at="")


def _validate_entry(destination: str, sources: list[Intention], *, legacy_write: bool) -> None:
    """The ``service-intentions`` config entry's validation, first failure wins, with Consul's texts."""
    if destination != WILDCARD and WILDCARD in destination:
        raise IntentionError(f"Name: {PARTIAL_WILDCARD}")
    seen: set[str] = set()
    for i, src in enumerate(sources):
        at = f"Sources[{i}]"
        if src.source != WILDCARD and WILDCARD in src.source:
            raise IntentionError(f"{at}.Name: {PARTIAL_WILDCARD}")
        if len(src.description) > MAX_DESCRIPTION:
            raise IntentionError(f"{at}.Description exceeds maximum length {MAX_DESCRIPTION}")
        if not legacy_write and src.legacy_meta:
            raise IntentionError(f"{at}.LegacyMeta must be omitted")
        if (legacy_write or not src.permissions) and src.action not in ("allow", "deny"):
            raise IntentionError(f"{at}.Action must be set to 'allow' or 'deny'")
        if src.permissions and src.action:
            raise IntentionError(f"{at}.Action must be omitted if Permissions are specified")
        if destination == WILDCARD and src.permissions:
            raise IntentionError(f"{at}.Permissions cannot be specified on intentions with wildcarded destinations")
        if src.source_type != "consul":
            raise IntentionError(f"{at}.Type must be set to 'consul'")
        for j, permission in enumerate(src.permissions):
            _validate_permission(permission, f"{at}.Permissions[{j}]")
        if src.source in seen:
            raise IntentionError(f'{at} defines "{src.source}" more than once')
        seen.add(src.source)


def _validate_permission(permission: dict[str, Any], at: str) -> None:
    """An L7 permission: an action and a non-empty HTTP match with at most one path rule."""
    if permission.get("Action") not in ("allow", "deny"):
        raise IntentionError(f"{at}.Action must be set to 'allow' or 'deny'")
    http = permission.get("HTTP")
    if not isinstance(http, dict):
        raise IntentionError(f"{at}.HTTP is required")
    for key in ("PathExact", "PathPrefix"):
        if http.get(key) and not str(http[key]).startswith("/"):
            raise IntentionError(f"{at}.HTTP.{key} doesn't start with '/': {json.dumps(http[key])}")
    paths = [key for key in ("PathExact", "PathPrefix", "PathRegex") if http.get(key)]
    if len(paths) > 1:
        raise IntentionError(f"{at}.HTTP should only contain at most one of PathExact, PathPrefix, or PathRegex")
    if not paths and not http.get("Header") and not http.get("Methods"):
        raise IntentionError(f"{at}.HTTP should not be empty")


def _validate_legacy(intention: Intention) -> None:
    """The legacy ``Intention.Validate``: every problem at once, in go-multierror's format."""
    problems = []
    if not intention.source:
        problems.append("SourceName must be set")
    if not intention.destination:
        problems.append("DestinationName must be set")
    for label, name in (("SourceName", intention.source), ("DestinationName", intention.destination)):
        if name != WILDCARD and WILDCARD in name:
            problems.append(f"{label}: {PARTIAL_WILDCARD}")
    if len(intention.description) > MAX_DESCRIPTION:
        problems.append(f"Description exceeds maximum length {MAX_DESCRIPTION}")
    if intention.action not in ("allow", "deny"):
        problems.append("Action must be set to 'allow' or 'deny'")
    if intention.source_type != "consul":
        problems.append("SourceType must be set to 'consul'")
    if problems:
        raise IntentionError(multierror(problems))


def multierror(problems: list[str]) -> str:
    """go-multierror's default format, which Consul's error bodies show verbatim."""
    if len(problems) == 1:
        return f"1 error occurred:\n\t* {problems[0]}\n\n"
    points = "\n\t".join(f"* {p}" for p in problems)
    return f"{len(problems)} errors occurred:\n\t{points}\n\n"
