"""Fault injection for the shop: an error rate with a status code, and added latency, so the demo and the tests can
show what the mesh does about a failing or slow instance.

Knobs come from flags or ``SHOP_*`` variables, and from a JSON file (``--faults-file``) that is polled every 200 ms,
so a running instance's faults change without a restart. A fault is applied before the handler's own work, so an
injected error never leaves a side effect behind (a retried call is then always safe to re-send).

This module must not import meshlet: the plain apps (inventory, payments) use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger("meshlet_shop.faults")

POLL_S = 0.2
_FIELDS = ("error_rate", "error_code", "latency_ms")
STATUS_CODES = tuple(code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK)


class FaultsError(ValueError):
    """A knob with a value it cannot take: names the knob, the value and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        super().__init__(f"{field} = {value!r}: {allowed}")


@dataclass(frozen=True)
class Decision:
    """What to do to one call: sleep `delay_s`, then fail with `code` (a grpc.StatusCode name) unless None."""

    delay_s: float
    code: str | None


@dataclass(frozen=True)
class Faults:
    """The knobs. `error_rate` is the share of calls (0..1) that fail with `error_code`; every call waits
    `latency_ms` first."""

    error_rate: float = 0.0
    error_code: str = "UNAVAILABLE"
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise FaultsError("error_rate", self.error_rate, "must be a share of calls between 0 and 1")
        if self.error_code not in STATUS_CODES:
            raise FaultsError(
                "error_code", self.error_code, "must be a gRPC status code name other than OK, e.g. UNAVAILABLE"
            )
        if self.latency_ms < 0:
            raise FaultsError("latency_ms", self.latency_ms, "must be 0 or more milliseconds")

    def decide(self, rng: random.Random) -> Decision:
        """The fault for one call; `rng` is passed in so tests can script it."""
        failing = self.error_rate > 0 and rng.random() < self.error_rate
        return Decision(self.latency_ms / 1000.0, self.error_code if failing else None)

    def describe(self) -> str:
        return f"error_rate={self.error_rate:g} error_code={self.error_code} latency_ms={self.latency_ms:g}"


def parse_faults(data: Mapping[str, Any], base: Faults) -> Faults:
    """`base` with the knobs `data` sets (a faults file's object); raises FaultsError naming the bad knob."""
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise FaultsError(unknown[0], data[unknown[0]], "unknown knob; expected one of " + ", ".join(_FIELDS))
    changes: dict[str, Any] = {}
    for name in ("error_rate", "latency_ms"):
        if name in data:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise FaultsError(name, value, "must be a number")
            changes[name] = float(value)
    if "error_code" in data:
        code = data["error_code"]
        if not isinstance(code, str):
            raise FaultsError("error_code", code, "must be a gRPC status code name, e.g. UNAVAILABLE")
        changes["error_code"] = code.upper()
    return replace(base, **changes)


def read_faults_file(path: Path, base: Faults) -> Faults:
    """The knobs in the JSON file at `path` over `base`; raises FaultsError (also for unreadable JSON)."""
    return parse_faults_text(path.read_bytes(), path, base)


def parse_faults_text(content: bytes, path: Path, base: Faults) -> Faults:
    """The knobs in a faults file's `content` over `base`. An empty file is invalid, not "no knobs": it is what a
    reader sees halfway through an editor's or a script's write, and taking it as {} would reset the faults."""
    if not content.strip():
        raise FaultsError("faults file", str(path), 'is empty: write a JSON object, e.g. {"error_rate": 0}')
    try:
        data = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FaultsError("faults file", str(path), f"is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise FaultsError("faults file", str(path), 'must hold a JSON object, e.g. {"error_rate": 0.5}')
    return parse_faults(data, base)


class FaultInjector:
    """The current faults of one instance, applied to its calls; follows the faults file while `watch()` runs.

    The flags' faults are the base: a file's knobs override them, a deleted file brings them back, and a bad
    file is logged and ignored (the previous faults stay), so an edit in progress never stops the instance.
    """

    def __init__(
        self, base: Faults, *, instance: str, path: Path | None = None, rng: random.Random | None = None
    ) -> None:
        self.base = base
        self.current = base
        self.instance = instance
        self.path = path
        self.rng = rng or random.Random()
        self._seen: bytes | None = None

    def reload(self) -> bool:
        """Re-read the file if its content changed since the last look; True when the faults changed.

        The change is told by a hash of the content, not by (mtime, size): two writes of the same size within one
        tick of the file system's clock leave both equal, and the second would be missed."""
        if self.path is None:
            return False
        try:
            content: bytes | None = self.path.read_bytes()
        except FileNotFoundError:
            content = None
        except OSError as error:
            log.warning("ignoring the faults file %s: %s", self.path, error, extra={"instance": self.instance})
            return False
        seen = None if content is None else hashlib.sha256(content).digest()
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            faults = self.base if content is None else parse_faults_text(content, self.path, self.base)
        except FaultsError as error:
            log.warning("ignoring the faults file %s: %s", self.path, error, extra={"instance": self.instance})
            return False
        if faults == self.current:
            return False
        self.current = faults
        log.info("faults now %s", faults.describe(), extra={"instance": self.instance, "faults_file": str(self.path)})
        return True

    async def watch(self) -> None:
        """Poll the faults file until cancelled."""
        while True:
            with contextlib.suppress(Exception):  # never let a filesystem hiccup end the watch
                self.reload()
            await asyncio.sleep(POLL_S)

    async def apply(self, context: grpc.aio.ServicerContext, method: str) -> None:
        """Sleep the added latency, then maybe abort the call with the injected code and a message saying so."""
        decision = self.current.decide(self.rng)
        if decision.delay_s > 0:
            await asyncio.sleep(decision.delay_s)
        if decision.code is not None:
            log.info("injected %s on %s", decision.code, method, extra={"instance": self.instance})
            await context.abort(
                grpc.StatusCode[decision.code],
                f"{self.instance}: injected {decision.code} (fault injection, {self.current.describe()}); "
                "set the error rate to 0 with --error-rate, SHOP_ERROR_RATE or the faults file to stop it",
            )
