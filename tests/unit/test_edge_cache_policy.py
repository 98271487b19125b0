"""The cache's request path with authenticated callers set as the edge's auth sets them (the ``caller.current``
context variable), on the in-process store, with an upstream that counts its calls: a private entry is found only
by its own caller, a public one by everyone. (tests/integration/test_edge_policies.py shows the same through a
real edge's auth.)"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from meshlet.config.schema import EdgeCache
from meshlet_edge import caller
from meshlet_edge.cache.policy import ResponseCache

STOCK = "/shop.inventory.v1.Inventory/GetStock"


def as_caller(subject: str | None) -> caller.Caller | None:
    """A caller named "alice" holds an API key; "jwt:alice" a token whose subject is alice."""
    if subject is None:
        return None
    if subject.startswith("jwt:"):
        return caller.Caller(subject=subject[4:], kind="jwt", plan=None, scopes=frozenset(), claims={})
    return caller.Caller(subject=subject, kind="api_key", plan=None, scopes=frozenset(), claims={})


class Upstream:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> web.StreamResponse:
        self.calls += 1
        await asyncio.sleep(0.01)
        return web.json_response({"call": self.calls, "for": getattr(caller.current.get(), "subject", None)})


async def ask(
    cache: ResponseCache, path: str, subject: str | None, upstream: Upstream, verb: str = "GET"
) -> web.Response:
    token = caller.current.set(as_caller(subject))
    try:
        rule = cache.rule_for(verb, path, STOCK)
        assert rule is not None
        response = await cache.serve(make_mocked_request(verb, path), rule, upstream)
        assert isinstance(response, web.Response)
        return response
    finally:
        caller.current.reset(token)


def cache_of(public: bool) -> ResponseCache:
    return ResponseCache(
        EdgeCache.model_validate({"routes": [{"match": "GET /v1/items/*", "ttl": "30s", "public": public}]})
    )


async def test_a_private_entry_is_never_served_to_another_caller() -> None:
    cache, upstream = cache_of(public=False), Upstream()
    alice = await ask(cache, "/v1/items/a", "alice", upstream)
    bob = await ask(cache, "/v1/items/a", "bob", upstream)
    assert upstream.calls == 2
    assert alice.body != bob.body
    assert b'"for": "bob"' in bob.body  # type: ignore[operator]
    again = await ask(cache, "/v1/items/a", "alice", upstream)
    assert again.headers["Cache-Status"].startswith("meshlet-edge; hit")
    assert again.body == alice.body
    assert again.headers["Cache-Control"] == "private, max-age=30"
    anonymous = await ask(cache, "/v1/items/a", None, upstream)
    assert anonymous.headers["Cache-Status"] == "meshlet-edge; fwd=bypass; detail=no-caller"
    assert upstream.calls == 3


async def test_a_token_and_an_api_key_of_one_subject_are_two_callers_to_a_private_entry() -> None:
    cache, upstream = cache_of(public=False), Upstream()
    await ask(cache, "/v1/items/a", "alice", upstream)  # the key owned by alice
    token = await ask(cache, "/v1/items/a", "jwt:alice", upstream)  # a token whose sub is alice: another caller
    assert token.headers["Cache-Status"] == "meshlet-edge; fwd=miss; stored"
    assert upstream.calls == 2


async def test_a_public_entry_is_shared_by_every_caller() -> None:
    cache, upstream = cache_of(public=True), Upstream()
    await ask(cache, "/v1/items/a", "alice", upstream)
    bob = await ask(cache, "/v1/items/a", "bob", upstream)
    nobody = await ask(cache, "/v1/items/a", None, upstream)
    assert upstream.calls == 1
    assert bob.headers["Cache-Status"].startswith("meshlet-edge; hit")
    assert nobody.headers["Cache-Status"].startswith("meshlet-edge; hit")


async def test_a_head_miss_stores_the_whole_answer_for_the_get_and_a_head_finds_the_gets_entry() -> None:
    cache, upstream = cache_of(public=True), Upstream()
    head = await ask(cache, "/v1/items/a", None, upstream, verb="HEAD")
    assert head.headers["Cache-Status"] == "meshlet-edge; fwd=miss; stored"
    get = await ask(cache, "/v1/items/a", None, upstream)
    assert get.headers["Cache-Status"].startswith("meshlet-edge; hit")
    assert get.body == b'{"call": 1, "for": null}'  # the body aiohttp leaves out of the HEAD's answer, kept
    again = await ask(cache, "/v1/items/a", None, upstream, verb="HEAD")
    assert again.headers["Cache-Status"].startswith("meshlet-edge; hit")
    assert upstream.calls == 1


async def test_concurrent_misses_of_one_caller_collapse_but_two_callers_do_not_share() -> None:
    cache, upstream = cache_of(public=False), Upstream()
    answers = await asyncio.gather(
        *(ask(cache, "/v1/items/a", "alice", upstream) for _ in range(5)),
        *(ask(cache, "/v1/items/a", "bob", upstream) for _ in range(5)),
    )
    assert upstream.calls == 2
    assert len({a.body for a in answers[:5]}) == 1
    assert len({a.body for a in answers[5:]}) == 1
    assert answers[0].body != answers[5].body


async def test_a_successful_write_invalidates_and_a_read_or_a_failure_does_not() -> None:
    cache = ResponseCache(
        EdgeCache.model_validate(
            {"routes": [{"match": "GET /v1/items/*", "ttl": "30s", "public": True, "invalidate": ["* /v1/items/*"]}]}
        )
    )
    upstream = Upstream()
    await ask(cache, "/v1/items/a", None, upstream)
    await cache.after("GET", "/v1/items/a", STOCK, 200)
    await cache.after("POST", "/v1/items/a", STOCK, 503)
    assert (await ask(cache, "/v1/items/a", None, upstream)).headers["Cache-Status"].startswith("meshlet-edge; hit")
    await cache.after("DELETE", "/v1/items/a", STOCK, 204)
    assert (await ask(cache, "/v1/items/a", None, upstream)).headers["Cache-Status"] == "meshlet-edge; fwd=miss; stored"
    assert cache.counts["invalidation"] == 1
