"""The edge's one way to make a Redis client, for every store that can live in Redis (the limits' counters, the
cache's entries): it gives up on a connect or a reply after the store's timeout and never retries by itself, so
the policy that asked decides what a failure means within its own budget; its pool reconnects on the next request.

redis-py (``pip install 'meshlet[edge-redis]'``) is imported only when a Redis URL is configured.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

from meshlet.errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis


def redis_client(url: str, timeout_s: float, *, field: str) -> Redis:
    """A client for `url`; a ConfigError naming `field` when redis-py is not installed."""
    try:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError:
        fix = "needs the redis package: pip install 'meshlet[edge-redis]', or set store: memory"
        raise ConfigError(field, where(url), fix) from None
    return Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )


def where(url: str) -> str:
    """The URL as logs may show it: without a password."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parsed.port}" if parsed.port else ""
    return urllib.parse.urlunsplit((parsed.scheme, host + port, parsed.path, "", ""))
