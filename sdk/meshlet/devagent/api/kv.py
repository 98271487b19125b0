"""Consul's ``/v1/kv/<key>``: read (one key, ``recurse``, ``keys`` with a separator, ``raw``), write with
``flags`` and ``cas``, delete (``recurse``, ``cas``), and blocking reads on a key or a prefix.

Every read carries ``X-Consul-Index``, a 404 for a missing key too: py-consul's ``index=True`` reads
fail without it. Sessions do not exist here, so lock operations answer as Consul does for an unknown one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from operator import itemgetter
from urllib.parse import urlencode

from aiohttp import web

from meshlet.devagent.api.common import (
    AGENT,
    ConsulError,
    QueryOptions,
    bad_request,
    block,
    json_response,
    query_options,
    set_meta,
)
from meshlet.devagent.kv import MAX_VALUE_BYTES, KVStore

PREFIX = "/v1/kv/"
MAX_UINT64 = 2**64 - 1
SIZE_HELP = "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size"


def add_routes(app: web.Application) -> None:
    """Register this section's routes."""
    app.router.add_get(PREFIX + "{key:.*}", read, allow_head=False)
    app.router.add_put(PREFIX + "{key:.*}", write)
    app.router.add_delete(PREFIX + "{key:.*}", delete)


# ------------------------------------------------------------------------------------------ handlers


async def read(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    options = query_options(request, agent.config.datacenter)
    key = key_of(request)
    store = agent.state.kv
    if "keys" in request.query:
        separator = request.query.get("separator", request.query.get("seperator", ""))
        index = await block(agent.changes, options, lambda: store.prefix_index(key))
        keys = store.keys(key, separator)
        if not keys and key:  # Consul answers the root with [] rather than 404
            return set_meta(web.Response(status=404), index)
        return set_meta(json_response(keys), index)
    if "recurse" in request.query:
        index = await block(agent.changes, options, lambda: store.prefix_index(key))
        entries = store.entries(key)
        if not entries:
            return set_meta(web.Response(status=404), index)
        return set_meta(json_response([entry.to_json() for entry in entries]), index)
    if not key:
        raise bad_request("Missing key name")
    await block(agent.changes, options, until_key_changes(store, key, options))
    entry = store.get(key)
    index = store.key_index(key)
    if entry is None:
        return set_meta(web.Response(status=404), index)
    if "raw" in request.query:
        raw = web.Response(body=entry.value or b"", content_type="text/plain")
        raw.headers["X-Content-Type-Options"] = "nosniff"
        raw.headers["Content-Security-Policy"] = "sandbox"
        return set_meta(raw, index)
    return set_meta(json_response([entry.to_json()]), index)


async def write(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    query_options(request, agent.config.datacenter)
    key = key_of(request)
    if not key:
        raise bad_request("Missing key name")
    refuse_conflicting(request, "cas", "acquire", "release")
    flags = uint64(request, "flags") or 0
    cas = uint64(request, "cas")
    if request.content_length is not None and request.content_length > MAX_VALUE_BYTES:
        raise too_large(request.content_length)
    value = await request.read()
    if len(value) > MAX_VALUE_BYTES:
        raise too_large(len(value))
    if "acquire" in request.query or "release" in request.query:
        return json_response(lock_operation(request))
    store = agent.state.kv
    if cas is None:
        return json_response(store.set(key, value, flags))
    return json_response(store.check_and_set(key, value, flags, cas))


async def delete(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    query_options(request, agent.config.datacenter)
    key = key_of(request)
    refuse_conflicting(request, "recurse", "cas")
    store = agent.state.kv
    if "recurse" in request.query:
        return json_response(store.delete_tree(key))
    if not key:
        raise bad_request("Missing key name")
    cas = uint64(request, "cas")
    if cas is None:
        return json_response(store.delete(key))
    return json_response(store.check_and_delete(key, cas))


# ------------------------------------------------------------------------------------------ helpers


def key_of(request: web.Request) -> str:
    """The decoded path after ``/v1/kv/`` (keys may hold ``/``), refused when it could traverse paths
    or carries stray spaces, as Consul's key validation does since the fix for CVE-2025-11392."""
    key = request.path[len(PREFIX) :]
    if "../" in key or "..\\" in key:
        raise bad_request(f"Invalid key name {json.dumps(key)}: keys must not contain path traversal sequences")
    if key != key.strip():
        raise bad_request(f"Invalid key name {json.dumps(key)}: keys must not have leading or trailing spaces")
    return key


def until_key_changes(store: KVStore, key: str, options: QueryOptions) -> Callable[[], int]:
    """The index a blocking read of one key waits on. While the key stays missing its index does not
    count as moved, so writes to other keys do not wake the query (Consul's ``ErrNotFound`` rule);
    the key appearing, changing or being deleted does."""
    missing_before = False

    def index_of() -> int:
        nonlocal missing_before
        if store.get(key) is not None:
            missing_before = False
            return store.key_index(key)
        if missing_before:
            return options.index
        missing_before = True
        return store.key_index(key)

    return index_of


def refuse_conflicting(request: web.Request, *names: str) -> None:
    """At most one of `names` may be given; Consul echoes the whole query, encoded, in its refusal."""
    if sum(name in request.query for name in names) > 1:
        encoded = urlencode(sorted(request.query.items(), key=itemgetter(0)))
        raise bad_request(f"Conflicting flags: {encoded}\n")


def uint64(request: web.Request, name: str) -> int | None:
    """A uint64 query parameter parsed as Go's ``strconv.ParseUint``, whose error Consul returns as a 500."""
    if name not in request.query:
        return None
    text = request.query[name]
    if not re.fullmatch(r"[0-9]+", text):
        raise ConsulError(500, f"strconv.ParseUint: parsing {json.dumps(text)}: invalid syntax")
    if int(text) > MAX_UINT64:
        raise ConsulError(500, f"strconv.ParseUint: parsing {json.dumps(text)}: value out of range")
    return int(text)


def too_large(size: int) -> ConsulError:
    return ConsulError(
        413, f"Request body({size} bytes) too large, max size: {MAX_VALUE_BYTES} bytes. See {SIZE_HELP}."
    )


def lock_operation(request: web.Request) -> bool:
    """``?acquire`` and ``?release`` without sessions: no session exists, so acquiring fails as Consul
    fails for an unknown session, and releasing finds no lock held by it."""
    acquire = "acquire" in request.query
    session = request.query["acquire" if acquire else "release"]
    if not session:
        raise ConsulError(500, "missing session")
    if acquire:
        raise ConsulError(500, f"invalid session {json.dumps(session)}")
    return False
