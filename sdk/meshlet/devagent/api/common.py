"""What every Consul HTTP endpoint shares: plain-text errors with Consul's status codes, pretty JSON (dev
mode), the query options (``index``, ``wait``, ``dc``, ``filter``, consistency flags), the
``X-Consul-*`` meta headers, and blocking queries that hold no thread.

Route modules raise :class:`ConsulError` (or :class:`~meshlet.devagent.decode.DecodeError`) and return
:func:`json_response`; the middleware turns everything else into Consul's answer, so that no request can
crash the agent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshlet.devagent.decode import DecodeError, DurationError, Field, decode, parse_duration

if TYPE_CHECKING:
    from meshlet.devagent.server import DevAgent

log = logging.getLogger("meshlet.devagent")

AGENT: web.AppKey[DevAgent] = web.AppKey("meshlet.devagent")
"""Where route handlers find the agent: ``agent = request.app[AGENT]``."""

DEFAULT_WAIT_S = 300.0  # Consul's DefaultQueryTime
MAX_WAIT_S = 600.0  # Consul's MaxQueryTime


class ConsulError(Exception):
    """An answer Consul gives as a status code and a plain-text reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def bad_request(reason: str) -> ConsulError:
    return ConsulError(400, reason)


def not_found(reason: str = "") -> ConsulError:
    return ConsulError(404, reason)


# ------------------------------------------------------------------------------------------ responses


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """Consul in dev mode pretty-prints every JSON body with four spaces and a trailing newline."""
    text = json.dumps(body, indent=4) + "\n"
    return web.Response(text=text, status=status, content_type="application/json", headers=headers)


class RenderCache:
    """Rendered JSON bodies keyed by the query and the Raft index they were rendered at.

    One write wakes every blocking query that watches it; a thousand watchers of one service then share one
    rendering instead of each building and pretty-printing the same answer. Keyed by the agent-wide index, an
    entry can never be stale: any write moves the index.
    """

    def __init__(self, size: int = 128) -> None:
        self._size = size
        self._bodies: dict[tuple[Any, ...], bytes] = {}

    def body(self, key: tuple[Any, ...], render: Callable[[], Any]) -> bytes:
        found = self._bodies.get(key)
        if found is None:
            if len(self._bodies) >= self._size:
                self._bodies.pop(next(iter(self._bodies)))
            found = self._bodies[key] = (json.dumps(render(), indent=4) + "\n").encode()
        return found


def cached_json_response(cache: RenderCache, key: tuple[Any, ...], render: Callable[[], Any]) -> web.Response:
    return web.Response(body=cache.body(key, render), content_type="application/json")


def empty_response() -> web.Response:
    """Handlers that return nothing answer 200 with an empty body (agent writes)."""
    return web.Response(status=200)


def text_error(status: int, reason: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=reason, content_type="text/plain", headers=headers)


def set_meta(response: web.StreamResponse, index: int) -> web.StreamResponse:
    """The query-metadata headers of every index-backed read; the index is never 0 (Consul's setIndex)."""
    response.headers["X-Consul-Index"] = str(max(1, index))
    response.headers["X-Consul-KnownLeader"] = "true"
    response.headers["X-Consul-LastContact"] = "0"
    response.headers["X-Consul-Effective-Consistency"] = "leader"
    return response


# ------------------------------------------------------------------------------------------ requests


async def read_json(request: web.Request, schema: Mapping[str, Field], *, required: bool = True) -> dict[str, Any]:
    """Decode the request body strictly (Consul's ``decodeBody``); an absent body is ``EOF`` when required."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise DecodeError("EOF")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(str(exc)) from None
    if body is None and not required:
        return {}
    return decode(body, schema)


def flag(request: web.Request, name: str) -> bool:
    """Presence flags (``?stale``, ``?recurse``): present means true unless given a false-ish value."""
    if name not in request.query:
        return False
    value = request.query[name].strip().lower()
    return value not in ("false", "0", "f")


def strict_bool(request: web.Request, name: str) -> bool | None:
    """A query bool Consul parses with ``strconv.ParseBool`` (empty value means true)."""
    if name not in request.query:
        return None
    value = request.query[name]
    truthy = {"", "1", "t", "T", "TRUE", "true", "True"}
    falsy = {"0", "f", "F", "FALSE", "false", "False"}
    if value in truthy:
        return True
    if value in falsy:
        return False
    raise bad_request(f"Invalid value for ?{name}")


def uint_param(request: web.Request, name: str, error: str) -> int | None:
    if name not in request.query:
        return None
    try:
        value = int(request.query[name])
    except ValueError:
        raise bad_request(error) from None
    if value < 0:
        raise bad_request(error)
    return value


@dataclass(frozen=True, slots=True)
class QueryOptions:
    """The options every read endpoint accepts (Consul's ``parse``)."""

    index: int
    wait_s: float
    filter: str
    datacenter: str


def query_options(request: web.Request, datacenter: str) -> QueryOptions:
    """Parse and validate the common read options, with Consul's error texts."""
    if flag(request, "stale") and flag(request, "consistent"):
        raise bad_request("Cannot specify ?stale with ?consistent, conflicting semantics.")
    if "max_stale" in request.query:
        try:
            parse_duration(request.query["max_stale"])
        except DurationError:
            raise bad_request(f'Invalid max_stale value "{request.query["max_stale"]}"') from None
    dc = request.query.get("dc") or datacenter
    if dc != datacenter:
        raise ConsulError(500, "No path to datacenter")
    index = uint_param(request, "index", "Invalid index") or 0
    wait_s = 0.0
    if request.query.get("wait"):  # Consul ignores an empty ?wait=
        try:
            wait_s = parse_duration(request.query["wait"])
        except DurationError:
            raise bad_request("Invalid wait time") from None
    return QueryOptions(index=index, wait_s=wait_s, filter=request.query.get("filter", ""), datacenter=dc)


# ------------------------------------------------------------------------------------------ blocking


class Changes:
    """Wakes blocking queries after writes. One shared event is swapped per write, so a write costs O(1)
    and a sleeping query costs one future and one timer: no thread is held."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closed = False
        self.waiting = 0  # blocking queries held now, for the agent's /metrics

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def close(self) -> None:
        """The agent is stopping: answer every blocked query now, as Consul does on shutdown."""
        self.closed = True
        self.notify()

    async def wait(self, timeout_s: float) -> None:
        """Return after the next write, or after `timeout_s`."""
        if self.closed:
            return
        self.waiting += 1
        try:
            await asyncio.wait_for(self._event.wait(), timeout_s)
        except TimeoutError:
            pass
        finally:
            self.waiting -= 1


def wait_timeout(wait_s: float, rng: random.Random | None = None) -> float:
    """Consul's blocking timeout: ``wait`` (default 5m, capped at 10m) plus up to ``wait/16`` of jitter."""
    timeout = DEFAULT_WAIT_S if wait_s <= 0 else min(wait_s, MAX_WAIT_S)
    return timeout + (rng or random).uniform(0, timeout / 16)


async def block(changes: Changes, options: QueryOptions, index_of: Callable[[], int]) -> int:
    """Hold a blocking query until ``index_of()`` passes ``?index`` or the wait runs out; return the index.

    Without ``?index`` (or with 0) the query answers at once. On timeout the current index is returned
    unchanged, which clients read as "nothing new" (Consul's documented behaviour).
    """
    current = index_of()
    if options.index <= 0 or current > options.index:
        return current
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_timeout(options.wait_s)
    while current <= options.index and not changes.closed:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        await changes.wait(remaining)
        current = index_of()
    return current


# ------------------------------------------------------------------------------------------ middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def consul_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every failure to the status and plain-text body Consul would send; never let one escape."""
    try:
        response = await handler(request)
    except ConsulError as exc:
        response = text_error(exc.status, exc.reason)
    except DecodeError as exc:
        response = text_error(400, f"Request decode failed: {exc}")
    except web.HTTPMethodNotAllowed as exc:
        allowed = ",".join(["OPTIONS", *sorted(exc.allowed_methods)])
        if request.method == "OPTIONS":
            response = web.Response(status=200, headers={"Allow": allowed})
        else:
            response = text_error(405, f"method {request.method} not allowed", headers={"Allow": allowed})
    except web.HTTPNotFound:
        response = text_error(404, "Invalid URL path: not a recognized HTTP API endpoint\n")
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        response = text_error(500, f"{type(exc).__name__}: {exc}")
    response.headers.setdefault("X-Consul-Default-Acl-Policy", "allow")
    return response


# ------------------------------------------------------------------------------------------ filtering


def apply_filter(items: list[Any], expression: str) -> list[Any]:
    """Keep the rendered elements that match ``?filter=``; a bad expression is a 500, as in Consul."""
    if not expression:
        return items
    from meshlet.devagent.filtering import FilterError, compile_filter

    try:
        predicate = compile_filter(expression)
    except FilterError as exc:
        raise ConsulError(500, f"Failed to create boolean expression evaluator: {exc}") from None
    return [item for item in items if predicate(item)]
