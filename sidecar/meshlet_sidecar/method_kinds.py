"""What the sidecar knows of each method it proxies: its kind (unary or streaming on either side) and whether
re-sending it is safe, read from proto descriptors (descriptor sets in config, or a reflection service).

A method whose kind is known is served with a typed raw-bytes handler (a unary call costs about a third less
than the generic stream-stream one); a method not known yet is served generically, and the table asks its
source in the background. Pure: descriptors in, answers out; the schedule of when to ask takes the time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from meshlet.call import Cardinality

log = logging.getLogger("meshlet.sidecar")

_SAFE_LEVELS = (descriptor_pb2.MethodOptions.IDEMPOTENT, descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS)


@dataclass(frozen=True, slots=True)
class MethodInfo:
    """One method as its proto declares it."""

    kind: Cardinality
    idempotent: bool  # idempotency_level IDEMPOTENT or NO_SIDE_EFFECTS
    # The request's message class, for the inbound validate stage; None when its file or an import of it was not
    # among the descriptors. Not part of what a method is: a recheck that builds a new class is no news.
    request_type: type[Any] | None = field(default=None, compare=False, repr=False)


def methods_in(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> dict[str, MethodInfo]:
    """Every method of every service in `files`, by path (``/pkg.Service/Method``)."""
    files = list(files)
    types = message_types(files)
    methods: dict[str, MethodInfo] = {}
    for file in files:
        prefix = f"{file.package}." if file.package else ""
        for service in file.service:
            for method in service.method:
                kind = Cardinality((method.client_streaming, method.server_streaming))
                idempotent = method.options.idempotency_level in _SAFE_LEVELS
                request_type = types.get(method.input_type.lstrip("."))
                methods[f"/{prefix}{service.name}/{method.name}"] = MethodInfo(kind, idempotent, request_type)
    return methods


def message_types(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> dict[str, type[Any]]:
    """The message classes of `files`, by full name, from a pool of their own (never the process's default
    pool: an app's descriptors must not clash with meshlet's). A file whose imports are missing is left out, and
    its messages with it."""
    by_name = {file.name: file for file in files}
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    failed: set[str] = set()

    def add(name: str, seen: frozenset[str] = frozenset()) -> bool:
        if name in added or name in failed:
            return name in added
        file = by_name.get(name)
        if file is None or name in seen or not all(add(d, seen | {name}) for d in file.dependency):
            failed.add(name)
            return False
        try:
            pool.Add(file)
        except (TypeError, ValueError) as error:  # a clash or a broken file: its messages stay unknown
            log.debug("cannot build the message types of %s: %s", name, error)
            failed.add(name)
            return False
        added.add(name)
        return True

    types: dict[str, type[Any]] = {}
    for file in by_name.values():
        if not add(file.name):
            continue
        prefix = f"{file.package}." if file.package else ""
        for message in file.message_type:
            full_name = prefix + message.name
            types[full_name] = message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))
    return types


def parse_files(serialized: Iterable[bytes]) -> list[descriptor_pb2.FileDescriptorProto]:
    """FileDescriptorProtos as a reflection service sends them; ValueError when one is not."""
    files = []
    for data in serialized:
        file = descriptor_pb2.FileDescriptorProto()
        try:
            file.ParseFromString(data)
        except DecodeError as error:
            raise ValueError(f"not a FileDescriptorProto: {error}") from None
        files.append(file)
    return files


def methods_in_descriptor_set(data: bytes) -> dict[str, MethodInfo]:
    """The methods of a FileDescriptorSet (what ``protoc --descriptor_set_out`` writes); ValueError when `data` is
    not one, or declares no service at all (a set written without the service's file is a mistake worth naming)."""
    files = descriptor_pb2.FileDescriptorSet()
    try:
        files.ParseFromString(data)
    except DecodeError as error:
        raise ValueError(f"not a FileDescriptorSet ({error}): write it with protoc --descriptor_set_out") from None
    methods = methods_in(files.file)
    if not methods:
        raise ValueError("declares no service: include the .proto files that define the services")
    return methods


class MethodTable:
    """The methods known for one source (the local app, or one upstream): fixed ones from descriptor sets, plus
    what its reflection service has told. `version` grows whenever something new is learnt, so the handlers built
    from the table can tell that they are stale with one integer comparison."""

    __slots__ = ("_fixed", "_known", "_on_miss", "version")

    def __init__(self, fixed: Mapping[str, MethodInfo] | None = None) -> None:
        self._known: dict[str, MethodInfo] = dict(fixed or {})
        self._fixed = frozenset(self._known)
        self._on_miss: Callable[[str], None] | None = None
        self.version = 0

    def get(self, path: str) -> MethodInfo | None:
        return self._known.get(path)

    def learn(self, methods: Mapping[str, MethodInfo]) -> bool:
        """Add what a source told, its newer answer replacing an older one; True only when something changed
        (a recheck that says the same is no news). Fixed entries (descriptor sets) win: they are what the operator
        declared. A method whose kind changed (the app redeployed with it streaming) gets its new handler on the
        next call, as every handler built from the table is built again once its version moves."""
        new = {
            path: info for path, info in methods.items() if path not in self._fixed and self._known.get(path) != info
        }
        if not new:
            return False
        self._known.update(new)
        self.version += 1
        return True

    def on_miss(self, ask: Callable[[str], None]) -> None:
        """Who to tell when a call arrives for a method the table does not know (a learner that asks)."""
        self._on_miss = ask

    def missed(self, path: str) -> None:
        if self._on_miss is not None:
            self._on_miss(path)

    def __len__(self) -> int:
        return len(self._known)

    def __repr__(self) -> str:
        return f"<MethodTable {len(self._known)} methods, version {self.version}>"


class AskSchedule:
    """When a learner may ask its reflection service again: never while a question is out; after a failure
    (unreachable, timed out) with a doubling backoff up to `max_backoff_s`; after an answer that left a method
    unknown, not before `recheck_s` (the app may have been redeployed with new methods); after a refusal (no
    reflection service there, or intentions that do not let us ask), not before `refused_s`."""

    __slots__ = ("_backoff_s", "_in_flight", "_next_at", "max_backoff_s", "min_backoff_s", "recheck_s", "refused_s")

    def __init__(
        self,
        *,
        min_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        recheck_s: float = 30.0,
        refused_s: float = 300.0,
    ) -> None:
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.recheck_s = recheck_s
        self.refused_s = refused_s
        self._backoff_s = min_backoff_s
        self._next_at = float("-inf")
        self._in_flight = False

    def may_ask(self, now: float) -> bool:
        return not self._in_flight and now >= self._next_at

    def asked(self) -> None:
        self._in_flight = True

    def answered(self, now: float) -> None:
        self._in_flight = False
        self._backoff_s = self.min_backoff_s
        self._next_at = now + self.recheck_s

    def refused(self, now: float) -> float:
        """Record a definite no (UNIMPLEMENTED, PERMISSION_DENIED): asking again soon would get the same answer
        and, at an upstream, a denial logged each time. Returns the wait before the next question."""
        self._in_flight = False
        self._backoff_s = self.min_backoff_s
        self._next_at = now + self.refused_s
        return self.refused_s

    def failed(self, now: float) -> float:
        """Record a failed question; returns the wait before the next one."""
        self._in_flight = False
        wait = self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self.max_backoff_s)
        self._next_at = now + wait
        return wait
