"""ConsulAuthorizer: authorization from Consul's intentions (``authz.source: consul``), answered from memory.

Consul decides through its agent's ``POST /v1/agent/connect/authorize`` ({Target, ClientCertURI,
ClientCertSerial} -> {Authorized, Reason}); py-consul's wrapper sends PUT, which Consul answers 405, so this
module posts itself. A decision is kept per (caller's SPIFFE ID, target) and refreshed in the background every
`ttl_s`, so only the first call of a new pair waits for the agent, and a changed intention takes effect
within about one TTL. When the agent cannot be asked, the decisions already known stay in force (stale beats
down) and a new pair gets the configured fallback: allow with ``authz.fail_open: true``, else deny.
Consul errors never reach the call path: they become that fallback and a log line.

Consul's authorize is connection-level (L4): it ignores the method, and an L7 intention counts as deny.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import time
from collections.abc import Callable
from typing import Any

from consul.callback import CB

from meshlet.deadline import Clock
from meshlet.security.intentions import Decision

log = logging.getLogger(__name__)

AUTHORIZE_PATH = "/v1/agent/connect/authorize"
ConsulFactory = Callable[[], Any]  # meshlet.discovery.consul_client.consul_factory(...), or a py-consul client
Pair = tuple[str, str]  # (caller's SPIFFE ID, target service)


class _Entry:
    __slots__ = ("decision", "idle_rounds", "provisional", "used")

    def __init__(self, decision: Decision, *, provisional: bool) -> None:
        self.decision = decision
        self.provisional = provisional  # the fallback, not Consul's answer: replaced as soon as Consul answers
        self.used = True
        self.idle_rounds = 0


class ConsulAuthorizer:
    """An `Authorizer` over the Consul agent. Decisions live for `ttl_s` between background refreshes; a pair
    not used for `forget_after_s` is forgotten (while Consul answers), at most `max_pairs` are kept."""

    def __init__(
        self,
        consul: ConsulFactory | Any,
        *,
        ttl_s: float = 10.0,
        fail_open: bool = False,
        allow_unidentified: bool = False,
        timeout_s: float = 2.0,
        forget_after_s: float = 300.0,
        max_pairs: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be above 0, got {ttl_s!r}")
        self.ttl_s = ttl_s
        self.fail_open = fail_open
        self._source = consul
        self._timeout_s = timeout_s
        self._forget_rounds = max(1, round(forget_after_s / ttl_s))
        self._max_pairs = max_pairs
        self._clock = clock
        self._entries: dict[Pair, _Entry] = {}
        self._pending: dict[Pair, asyncio.Future[Decision]] = {}
        self._client: Any = None
        self._owns_client = False
        self._task: asyncio.Task[None] | None = None
        self._down_until = 0.0  # while Consul is known to be failing, new pairs get the fallback without asking
        self._failures = 0
        default = "allow" if allow_unidentified else "deny"
        self._unidentified = Decision(
            allow_unidentified,
            f"the caller has no identity, so Consul's intentions cannot be asked, and authz.default is {default}",
        )

    # ------------------------------------------------------------------ the Authorizer seam

    def decide_now(self, peer_uri: str | None, destination: str, method: str) -> Decision | None:
        """The known decision for the pair, or None if it was never asked (then await `decide`)."""
        if peer_uri is None:
            return self._unidentified
        entry = self._entries.get((peer_uri, destination))
        if entry is None:
            return None
        entry.used = True
        return entry.decision

    async def decide(self, peer_uri: str | None, destination: str, method: str) -> Decision:
        """Ask Consul about a new pair; concurrent first calls of one pair share one request."""
        known = self.decide_now(peer_uri, destination, method)
        if known is not None:
            return known
        assert peer_uri is not None
        self._start()
        pair = (peer_uri, destination)
        pending = self._pending.get(pair)
        if pending is None:
            pending = self._pending[pair] = asyncio.ensure_future(self._first_answer(pair))
            pending.add_done_callback(lambda _done: self._pending.pop(pair, None))
        return await asyncio.shield(pending)  # a cancelled call must not cancel the others' answer

    def remedy(self, source: str, destination: str, method: str) -> str:
        pair = f"{shlex.quote(source)} {shlex.quote(destination)}"
        return f"to allow it, run: meshlet intention create --allow --replace {pair} (or Consul's own CLI or UI)"

    @property
    def failing(self) -> bool:
        """True from a failed request to the agent until one succeeds."""
        return self._failures > 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start refreshing in the background. Optional: the first `decide` starts it too."""
        self._start()

    async def close(self) -> None:
        task, self._task = self._task, None
        pending: list[asyncio.Future[Any]] = [*self._pending.values(), *([task] if task else [])]
        for future in pending:
            future.cancel()
        for future in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await future
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            with contextlib.suppress(Exception):
                await client.close()

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever(), name="consul-authz")

    # ------------------------------------------------------------------ asking Consul

    async def _first_answer(self, pair: Pair) -> Decision:
        if self._clock() < self._down_until:
            decision, provisional = self._fallback("it failed moments ago"), True
        else:
            try:
                decision, provisional = await self._ask(pair), False
                self._recovered()
            except Exception as exc:
                decision, provisional = self._fallback(_describe(exc)), True
                self._failed(exc)
        if len(self._entries) >= self._max_pairs:
            del self._entries[next(iter(self._entries))]
        self._entries[pair] = _Entry(decision, provisional=provisional)
        return decision

    async def _ask(self, pair: Pair) -> Decision:
        peer_uri, target = pair
        client = self._client
        if client is None:  # built here, inside the try of every caller: a factory that fails is an outage too
            self._owns_client = callable(self._source)
            client = self._client = self._source() if self._owns_client else self._source
        body = json.dumps({"Target": target, "ClientCertURI": peer_uri, "ClientCertSerial": ""})
        async with asyncio.timeout(self._timeout_s):
            answer = await client.http.post(
                CB.json(allow_404=False), AUTHORIZE_PATH, headers=client.prepare_headers(), data=body
            )
        if not isinstance(answer, dict) or not isinstance(answer.get("Authorized"), bool):
            raise ValueError(f"unexpected answer from {AUTHORIZE_PATH}: {answer!r}")
        return Decision(answer["Authorized"], f"Consul: {answer.get('Reason') or 'no reason given'}")

    def _fallback(self, why: str) -> Decision:
        verdict = "allowed (authz.fail_open is true)" if self.fail_open else "denied (authz.fail_open is false)"
        return Decision(self.fail_open, f"Consul could not be asked ({why}); a caller not seen before is {verdict}")

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s)
            try:
                await self.refresh()
            except Exception:  # a bug here must not freeze every decision: log it and refresh next round
                log.exception("refreshing authorization decisions failed")

    async def refresh(self) -> None:
        """Ask Consul again about every remembered pair; forget pairs idle for long (only while Consul answers,
        so an outage never costs a decision already known)."""
        for pair, entry in list(self._entries.items()):
            if entry.used:
                entry.used, entry.idle_rounds = False, 0
            else:
                entry.idle_rounds += 1
                if entry.idle_rounds > self._forget_rounds and not self._failures:
                    del self._entries[pair]
                    continue
            try:
                decision = await self._ask(pair)
            except Exception as exc:
                self._failed(exc)
                return  # the agent is away: keep every decision as it is and try again next round
            self._recovered()
            if decision != entry.decision or entry.provisional:
                if decision.allowed != entry.decision.allowed:
                    log.info("Consul intention changed for %s -> %s: %s", *pair, decision.reason)
                entry.decision, entry.provisional = decision, False

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        self._down_until = self._clock() + self.ttl_s
        if self._failures == 1:
            log.warning(
                "cannot ask Consul for authorization; keeping %d known decisions, new callers are %s: %s",
                len(self._entries),
                "allowed (authz.fail_open)" if self.fail_open else "denied (fail-closed)",
                _describe(exc),
                extra={"event": "authz_consul_unreachable", "fail_open": self.fail_open},
            )

    def _recovered(self) -> None:
        if self._failures:
            log.info("Consul answers authorization again after %d failed requests", self._failures)
            self._failures = 0
            self._down_until = 0.0

    def __repr__(self) -> str:
        state = f"failing ({self._failures} in a row)" if self._failures else "answering"
        mode = "fail-open" if self.fail_open else "fail-closed"
        return f"<ConsulAuthorizer {len(self._entries)} pairs, ttl {self.ttl_s:g}s, {mode}, Consul {state}>"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
