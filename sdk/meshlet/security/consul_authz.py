"""ConsulAuthorizer: authorization from Consul's intentions (``authz.source: consul``), answered from memory.

Consul decides through its agent's ``POST /v1/agent/connect/authorize`` ({Target, ClientCertURI,
ClientCertSerial} -> {Authorized, Reason}); py-consul's wrapper sends PUT, which Consul answers 405, so this
module posts itself. A decision is kept per (caller's SPIFFE ID, target). Consul cannot block on authorize, so a
blocking query on the intentions list (``GET /v1/connect/intentions?index=``) watches for changes: when its
index moves, every remembered pair is asked again at once. A refresh every `ttl_s` is the safety net for an
agent whose token may not read intentions.

Each pair is answered on its own. A 4xx for one pair (a caller Consul will not decide about) is that pair's
answer, a deny with the agent's reason, logged; only a real outage (no connection, no answer in time, a 5xx)
counts as "Consul is down": then the decisions already known stay in force (stale beats down) and a new pair
gets the configured fallback, allow with ``authz.fail_open: true``, else deny, until Consul answers again.
Consul errors never reach the call path: they become a decision and a log line.

Consul's authorize is connection-level (L4): it ignores the method, and an L7 intention counts as deny.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import time
from collections.abc import Awaitable, Callable
from typing import Any

from meshlet.deadline import Clock
from meshlet.security.intentions import Decision

log = logging.getLogger(__name__)

AUTHORIZE_PATH = "/v1/agent/connect/authorize"
INTENTIONS_PATH = "/v1/connect/intentions"
ConsulFactory = Callable[[], Any]  # meshlet.discovery.consul_client.consul_factory(...), or a py-consul client
Pair = tuple[str, str]  # (caller's SPIFFE ID, target service)
OUTAGE_STREAK = 3  # a refresh round that meets this many outages in a row stops: the agent is away, not one pair


class Outage(Exception):
    """The agent could not be asked: no connection, no answer in time, or a 5xx."""


class _Entry:
    __slots__ = ("decision", "idle_rounds", "provisional", "used")

    def __init__(self, decision: Decision, *, provisional: bool) -> None:
        self.decision = decision
        self.provisional = provisional  # the fallback, not Consul's answer: replaced as soon as Consul answers
        self.used = True
        self.idle_rounds = 0


class ConsulAuthorizer:
    """An `Authorizer` over the Consul agent. Decisions are asked again whenever the intentions change (a
    blocking query) and at least every `ttl_s`; a pair not used for `forget_after_s` is forgotten (while Consul
    answers), at most `max_pairs` are kept."""

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
        watch_wait_s: float = 60.0,
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
        self._watch_wait_s = watch_wait_s
        self._clock = clock
        self._entries: dict[Pair, _Entry] = {}
        self._pending: dict[Pair, asyncio.Future[Decision]] = {}
        self._client: Any = None
        self._owns_client = False
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()  # set by the intentions watch: refresh now rather than at the next ttl
        self._down_until = 0.0  # while Consul is known to be failing, new pairs get the fallback without asking
        self._failures = 0
        self.refreshes = 0  # completed refresh rounds, for tests and /clusters-style introspection
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
        """True from a request that met an outage until one succeeds."""
        return self._failures > 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start watching and refreshing in the background. Optional: the first `decide` starts it too."""
        self._start()

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        pending: list[asyncio.Future[Any]] = [*self._pending.values(), *tasks]
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
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._refresh_forever(), name="consul-authz"),
                loop.create_task(self._watch_intentions(), name="consul-authz-watch"),
            ]

    # ------------------------------------------------------------------ asking Consul

    async def _first_answer(self, pair: Pair) -> Decision:
        if self._clock() < self._down_until:
            decision, provisional = self._fallback("it failed moments ago"), True
        else:
            try:
                decision, provisional = await self._ask(pair), False
                self._recovered()
            except Exception as exc:  # an Outage, or a surprise: never an error on the call path
                decision, provisional = self._fallback(_describe(exc)), True
                self._failed(exc)
        if len(self._entries) >= self._max_pairs:
            del self._entries[next(iter(self._entries))]
        self._entries[pair] = _Entry(decision, provisional=provisional)
        return decision

    def _agent(self) -> Any:
        """The client, built on first use inside `_answer`'s try: a factory that fails is an outage too."""
        if self._client is None:
            self._owns_client = callable(self._source)
            self._client = self._source() if self._owns_client else self._source
        return self._client

    async def _ask(self, pair: Pair) -> Decision:
        """Consul's answer for one pair. A 4xx is this pair's answer (a deny), anything else amiss an Outage."""
        peer_uri, target = pair
        body = json.dumps({"Target": target, "ClientCertURI": peer_uri, "ClientCertSerial": ""})
        response = await self._answer(
            AUTHORIZE_PATH,
            self._timeout_s,
            lambda client: client.http.post(lambda r: r, AUTHORIZE_PATH, headers=client.prepare_headers(), data=body),
        )
        if 400 <= response.code < 500:
            text = str(response.body).strip()[:200] or "no reason given"
            log.warning(
                "Consul refused to authorize %s -> %s (%d: %s); this caller is denied",
                peer_uri,
                target,
                response.code,
                text,
                extra={"event": "authz_consul_refused_pair", "status": response.code},
            )
            return Decision(False, f"Consul refused to decide ({response.code}: {text})")
        try:
            answer = json.loads(response.body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("Authorized"), bool):
            raise Outage(f"unexpected answer from {AUTHORIZE_PATH}: {str(response.body)[:200]!r}")
        return Decision(answer["Authorized"], f"Consul: {answer.get('Reason') or 'no reason given'}")

    async def _answer(self, path: str, timeout_s: float, send: Callable[[Any], Awaitable[Any]]) -> Any:
        """The agent's response to `send(client)`; raises Outage for no client, no connection, no answer within
        `timeout_s`, or a 5xx. A 4xx is returned: it is an answer about what was asked."""
        try:
            client = self._agent()
            async with asyncio.timeout(timeout_s):
                response = await send(client)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise Outage(_describe(exc)) from exc
        if response.code >= 500:
            raise Outage(f"{path} answered {response.code}: {str(response.body).strip()[:200]}")
        return response

    def _fallback(self, why: str) -> Decision:
        verdict = "allowed (authz.fail_open is true)" if self.fail_open else "denied (authz.fail_open is false)"
        return Decision(self.fail_open, f"Consul could not be asked ({why}); a caller not seen before is {verdict}")

    async def _refresh_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.ttl_s)
            self._changed.clear()  # before the round: a change seen during it brings another round
            try:
                await self.refresh()
            except Exception:  # a bug here must not freeze every decision: log it and refresh next round
                log.exception("refreshing authorization decisions failed")

    async def refresh(self) -> None:
        """Ask Consul again about every remembered pair, each on its own; forget pairs idle for long (only while
        Consul answers, so an outage never costs a decision already known). A round that meets `OUTAGE_STREAK`
        outages in a row stops there: the agent is away, and every decision stays as it is."""
        streak = 0
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
            except Outage as exc:
                self._failed(exc)
                streak += 1
                if streak >= OUTAGE_STREAK:
                    break
                continue
            streak = 0
            self._recovered()
            if decision != entry.decision or entry.provisional:
                if decision.allowed != entry.decision.allowed:
                    log.info("Consul intention changed for %s -> %s: %s", *pair, decision.reason)
                entry.decision, entry.provisional = decision, False
        self.refreshes += 1

    async def _watch_intentions(self) -> None:
        """Block on the intentions list; each time its index moves, wake the refresher. An agent that will not
        let us read intentions (403) leaves the ttl refresh alone in charge, said once."""
        index, failures, told = 0, 0, False
        wait = f"{self._watch_wait_s:g}s"
        while True:
            params = [("index", str(index)), ("wait", wait)] if index else []
            try:
                response = await self._blocking_get(params)
            except Outage as exc:
                failures, index = failures + 1, 0  # the agent that answers next may be a new one, lower index
                if failures == 1:
                    log.info(
                        "cannot watch Consul's intentions (%s); retrying, and refreshing every %gs", exc, self.ttl_s
                    )
                await asyncio.sleep(min(self.ttl_s, 0.1 * 2 ** min(failures, 8)))
                continue
            reconnected, failures = failures > 0, 0
            if response.code != 200:
                if not told:
                    log.warning(
                        "cannot watch Consul's intentions (%s answered %d): intention changes apply at the next "
                        "refresh, every %gs; give the token intentions:read to apply them at once",
                        INTENTIONS_PATH,
                        response.code,
                        self.ttl_s,
                    )
                    told = True
                await asyncio.sleep(self.ttl_s)
                continue
            moved = int(response.headers.get("X-Consul-Index", 0) or 0)
            if (index and moved != index) or reconnected:  # after an outage: a change may have been missed
                self._changed.set()
            elif index:
                await asyncio.sleep(0.1)  # a wait that timed out; a pause keeps a misbehaving agent from spinning us
            index = 0 if moved < index else max(moved, 1)  # Consul's rules: backwards restarts; never block on 0

    async def _blocking_get(self, params: list[tuple[str, str]]) -> Any:
        timeout = self._watch_wait_s + self._watch_wait_s / 16 + self._timeout_s  # Consul adds up to wait/16
        return await self._answer(
            INTENTIONS_PATH,
            timeout,
            lambda client: client.http.get(
                lambda r: r, INTENTIONS_PATH, params=params, headers=client.prepare_headers()
            ),
        )

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
    if isinstance(exc, Outage):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
