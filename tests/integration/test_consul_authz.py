"""Authorization from Consul's intentions against a real dev agent: decisions are cached and refreshed, a
changed intention takes effect as soon as the intentions' index moves, a pair the agent refuses to decide about is
denied alone, and when the agent goes away the known decisions stay while new callers get the configured fail-open
or fail-closed answer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshlet.discovery.consul_client import consul_factory
from meshlet.security.consul_authz import ConsulAuthorizer
from tests.support.agents import Agent
from tests.support.processes import eventually

CREATE = "/shop.orders.v1.Orders/Create"
TTL_S = 0.2


def spiffe(service: str) -> str:
    return f"spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/{service}"


NOT_A_SERVICE = "spiffe://11111111-2222-3333-4444-555555555555.consul/agent/client/dc/dc1/id/node-1"  # Consul: 400


def allowed_now(authorizer: ConsulAuthorizer, service: str) -> bool | None:
    decision = authorizer.decide_now(spiffe(service), "orders", CREATE)
    return None if decision is None else decision.allowed


@pytest.mark.parametrize("fail_open", [True, False])
async def test_a_pair_the_agent_refuses_is_denied_alone_and_the_other_pairs_keep_following_consul(
    agent: Agent, fail_open: bool
) -> None:
    """A 400 for one caller is that caller's answer, not an outage: every other pair is still asked and refreshed,
    so the fallback (which would allow with fail_open, deny without) never stands in for Consul's answer."""
    consul = agent.client()
    first = "deny" if fail_open else "allow"  # the opposite of what the fallback would answer
    assert consul.connect.intentions.upsert("web", "orders", action=first)
    authorizer = ConsulAuthorizer(consul_factory(agent.url), ttl_s=TTL_S, fail_open=fail_open)
    try:
        refused = await authorizer.decide(NOT_A_SERVICE, "orders", CREATE)
        assert not refused.allowed
        assert "Consul refused to decide (400: ClientCertURI not a valid Service identifier)" in refused.reason
        assert not authorizer.failing

        web = await authorizer.decide(spiffe("web"), "orders", CREATE)
        assert web.allowed is (first == "allow")
        assert web.reason.startswith("Consul: Matched L4 intention"), web.reason

        flipped = "allow" if first == "deny" else "deny"
        assert consul.connect.intentions.upsert("web", "orders", action=flipped)
        await eventually(lambda: allowed_now(authorizer, "web") is (flipped == "allow"), f"web's {flipped} to apply")
        rounds = authorizer.refreshes
        await eventually(lambda: authorizer.refreshes > rounds + 1, "two more refresh rounds")
        assert not authorizer.failing
        assert authorizer.decide_now(NOT_A_SERVICE, "orders", CREATE) == refused
    finally:
        await authorizer.close()


async def test_an_intention_change_applies_when_the_intentions_index_moves_not_at_the_next_ttl(agent: Agent) -> None:
    """Consul cannot block on authorize, so the authorizer blocks on the intentions list: an allow -> deny is
    applied without waiting for the (here hour-long) safety-net refresh."""
    consul = agent.client()
    assert consul.connect.intentions.upsert("web", "orders", action="allow")
    authorizer = ConsulAuthorizer(consul_factory(agent.url), ttl_s=3600.0)
    try:
        assert (await authorizer.decide(spiffe("web"), "orders", CREATE)).allowed
        assert (await authorizer.decide(spiffe("api"), "orders", CREATE)).allowed  # no intention: default allow
        assert consul.connect.intentions.upsert("web", "orders", action="deny")
        await eventually(lambda: allowed_now(authorizer, "web") is False, "the deny intention to apply")
        assert allowed_now(authorizer, "api") is True
        denied = authorizer.decide_now(spiffe("web"), "orders", CREATE)
        assert denied is not None
        assert "Action: DENY" in denied.reason
    finally:
        await authorizer.close()


async def test_a_changed_intention_takes_effect_once_the_cached_decision_is_refreshed(agent: Agent) -> None:
    consul = agent.client()
    # py-consul's synchronous client blocks the loop while it writes, so no refresh can slip in between a
    # write and the assertion that follows it.
    assert consul.connect.intentions.upsert("web", "orders", action="deny")
    authorizer = ConsulAuthorizer(consul_factory(agent.url), ttl_s=TTL_S)
    try:
        assert authorizer.decide_now(spiffe("web"), "orders", CREATE) is None  # never asked: the call must wait
        first = await authorizer.decide(spiffe("web"), "orders", CREATE)
        assert not first.allowed
        assert first.reason.startswith("Consul: Matched L4 intention: default/web => default/orders")

        assert consul.connect.intentions.upsert("web", "orders", action="allow")
        cached = authorizer.decide_now(spiffe("web"), "orders", CREATE)
        assert cached is not None
        assert not cached.allowed  # the cache answers until its next refresh

        def now_allowed() -> bool:
            decision = authorizer.decide_now(spiffe("web"), "orders", CREATE)
            return decision is not None and decision.allowed

        await eventually(now_allowed, "the allow intention to take effect after the TTL")
        assert "Action: ALLOW" in (authorizer.decide_now(spiffe("web"), "orders", CREATE) or first).reason
    finally:
        await authorizer.close()


async def test_without_consul_known_decisions_stay_and_new_callers_get_the_configured_default(agent: Agent) -> None:
    consul = agent.client()
    assert consul.connect.intentions.upsert("web", "orders", action="allow")
    assert consul.connect.intentions.upsert("batch", "orders", action="deny")
    fail_closed = ConsulAuthorizer(consul_factory(agent.url), ttl_s=TTL_S, fail_open=False)
    fail_open = ConsulAuthorizer(consul_factory(agent.url), ttl_s=TTL_S, fail_open=True)
    try:
        for authorizer in (fail_closed, fail_open):
            assert (await authorizer.decide(spiffe("web"), "orders", CREATE)).allowed
            assert not (await authorizer.decide(spiffe("batch"), "orders", CREATE)).allowed

        assert agent.child is not None
        agent.child.stop()
        await eventually(lambda: fail_closed.failing and fail_open.failing, "a refresh to find the agent gone")

        for authorizer in (fail_closed, fail_open):
            known_allowed = authorizer.decide_now(spiffe("web"), "orders", CREATE)
            known_denied = authorizer.decide_now(spiffe("batch"), "orders", CREATE)
            assert known_allowed is not None
            assert known_allowed.allowed, authorizer
            assert known_denied is not None
            assert not known_denied.allowed, authorizer  # fail-open never opens a deny it already knows

        closed_answer = await fail_closed.decide(spiffe("api"), "orders", CREATE)
        open_answer = await fail_open.decide(spiffe("api"), "orders", CREATE)
        assert not closed_answer.allowed
        assert open_answer.allowed
        assert "Consul could not be asked" in closed_answer.reason
        assert "authz.fail_open is true" in open_answer.reason
        assert "Consul failing" in repr(fail_closed)
    finally:
        await fail_closed.close()
        await fail_open.close()


async def test_concurrent_first_calls_of_a_new_caller_share_one_question_to_the_agent(agent: Agent) -> None:
    client = consul_factory(agent.url)()
    posts: list[str] = []
    post = client.http.post

    def counting_post(callback: Any, path: str, **kwargs: Any) -> Any:
        posts.append(path)
        return post(callback, path, **kwargs)

    client.http.post = counting_post
    authorizer = ConsulAuthorizer(client, ttl_s=60.0)
    try:
        answers = await asyncio.gather(*(authorizer.decide(spiffe("web"), "orders", CREATE) for _ in range(20)))
        assert {answer.allowed for answer in answers} == {True}  # no intention: the dev agent's default allows
        assert posts == ["/v1/agent/connect/authorize"]
    finally:
        await authorizer.close()
        await client.close()
