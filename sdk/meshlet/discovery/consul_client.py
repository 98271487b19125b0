"""Build py-consul's asyncio client from the configured address and token: the one place that knows its quirks.

``consul.aio.Consul`` opens an aiohttp session in its constructor, so it must be built inside a running event
loop; discovery and registration therefore take a factory (`consul_factory`) and call it when they start.
"""

from __future__ import annotations

import functools
import urllib.parse
import warnings
from collections.abc import Callable
from typing import Any

import consul.aio

DEFAULT_ADDRESS = "http://127.0.0.1:8500"

ConsulClient = Any  # consul.aio.Consul; py-consul ships no type information
ConsulFactory = Callable[[], ConsulClient]


def consul_client(
    address: str = DEFAULT_ADDRESS,
    *,
    token: str | None = None,
    token_file: str | None = None,
    ca_file: str | None = None,
) -> ConsulClient:
    """A py-consul asyncio client for `address` (``http://host:port``, ``https://host:port`` or ``host:port``,
    the forms ``CONSUL_HTTP_ADDR`` takes). Call it inside a running loop; close it with ``await client.close()``.

    An explicit `token` wins over ``CONSUL_HTTP_TOKEN``, which py-consul would otherwise prefer: the config
    loader has already applied the environment, so what arrives here is the final word. A non-empty
    `token_file` wins over `token`, as in Consul's own client; it is read now, so a client built after a new
    ``consul login`` uses the new token. OSError if it cannot be read.
    """
    token = (read_token_file(token_file) or token) if token_file else token
    scheme, host, port = parse_address(address)
    with warnings.catch_warnings():
        # py-consul hands aiohttp an ssl_context argument that aiohttp deprecates; harmless, and fatal under -W error
        warnings.filterwarnings("ignore", message="ssl_context is deprecated", category=DeprecationWarning)
        # py-consul pastes host and port into its base URL: an IPv6 host needs its brackets there.
        url_host = f"[{host}]" if ":" in host else host
        client = consul.aio.Consul(host=url_host, port=port, scheme=scheme, token=token, verify=ca_file or True)
    if token is not None:
        client.token = token
    return client


def consul_factory(
    address: str = DEFAULT_ADDRESS,
    *,
    token: str | None = None,
    token_file: str | None = None,
    ca_file: str | None = None,
) -> ConsulFactory:
    """A zero-argument callable that builds a client with `consul_client` when a watcher or registration starts."""
    return functools.partial(consul_client, address, token=token, token_file=token_file, ca_file=ca_file)


def read_token_file(path: str) -> str | None:
    """The token in `path` (surrounding whitespace dropped), or None if it is empty."""
    with open(path, encoding="utf-8") as file:
        return file.read().strip() or None


def parse_address(address: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` from a Consul address; port defaults to 8500 (http) or 8501 (https), as Consul's."""
    parsed = urllib.parse.urlsplit(address if "//" in address else f"//{address}")
    scheme = parsed.scheme or "http"
    if scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"invalid Consul address {address!r}: expected http://host:port or https://host:port")
    try:
        port = parsed.port or (8501 if scheme == "https" else 8500)
    except ValueError:
        raise ValueError(f"invalid Consul address {address!r}: the port must be a number from 1 to 65535") from None
    return scheme, parsed.hostname, port


def go_duration(seconds: float) -> str:
    """A duration as Consul parses it (Go's time.ParseDuration): ``30s``, ``1500ms``."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"
