"""Where orders and inventory keep their state: in the process (``memory``, the default, what ``meshlet demo``
runs) or in Redis (``redis://HOST:PORT/DB``), which every replica of a service shares.

Why Redis: with two replicas each holding its own orders and stock, GetOrder depends on which replica the mesh
picks and the stock is split between them. Redis is what a shop of this size would pick: one round trip per
call, and Lua scripts that run atomically, so a reservation checks and takes stock in one step whatever replica
runs it. The client (the ``redis`` package, ``pip install 'meshlet[shop-redis]'``) is imported only when a Redis
URL is given, so the in-process default needs nothing beyond the SDK's own dependencies.
"""

from __future__ import annotations

import argparse
import urllib.parse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

MEMORY = "memory"
SCHEMES = ("redis", "rediss")
TIMEOUT_S = 2.0  # connect and per-command: a stuck Redis fails the call (UNAVAILABLE) instead of hanging it


class StoreUnavailable(Exception):
    """The shared store could not be asked or did not answer: the call may be repeated (it is idempotent)."""


class StoreSetupError(ValueError):
    """The store cannot be used as configured (the service exits 2 with this message)."""


def store_url(text: str) -> str:
    """``memory`` or a Redis URL with a host (argparse converter: the error names what is wanted)."""
    if text == MEMORY:
        return text
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in SCHEMES or not parsed.hostname:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither 'memory' nor a Redis URL such as redis://redis:6379/0 (rediss:// for TLS)"
        )
    try:
        parsed.port  # noqa: B018  (raises on a port that is no number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the port is not a number") from None
    database = parsed.path.lstrip("/")
    if database and not database.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: the database after the host is a number, e.g. /0")
    return text


def where(url: str) -> str:
    """The URL as logs may show it: without a password."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parsed.port}" if parsed.port else ""
    return urllib.parse.urlunsplit((parsed.scheme, host + port, parsed.path, "", ""))


def connect(url: str) -> Redis:
    """A Redis client for `url` (it connects on first use); StoreSetupError naming the extra without redis."""
    try:
        from redis.asyncio import Redis
    except ImportError:
        raise StoreSetupError(
            f"a Redis store ({where(url)}) needs the redis package: pip install 'meshlet[shop-redis]'"
        ) from None
    client: Redis = Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
    return client
