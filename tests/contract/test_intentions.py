"""Intentions and ``/v1/agent/connect/authorize``: writes change what authorize answers, wildcards rank
by Consul's precedence, L7 intentions deny at connect time, and bad requests get Consul's exact texts.

Every name is unique to its test, and no test writes a ``*`` -> ``*`` intention: the agent is shared.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import consul
import consul.aio
import pytest
import requests

from tests.support.agents import Agent
from tests.support.processes import wait_until

DEFAULT_REASON = "Default behavior configured by ACLs"
NOT_CONNECT = "ClientCertURI not a valid Connect identifier"
NOT_SERVICE = "ClientCertURI not a valid Service identifier"
ACTION_WITH_PERMISSIONS = "Sources[0].Action must be omitted if Permissions are specified"
L7_ALLOW_ALL = [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]


def spiffe(agent: Agent, service: str, trust_domain: str | None = None) -> str:
    trust_domain = trust_domain or agent.client().agent.connect.ca.roots()["TrustDomain"]
    return f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/{service}"


def authorize(agent: Agent, body: Any) -> requests.Response:
    """POST, as Consul requires (py-consul's own ``agent.connect.authorize`` sends PUT); a str is sent raw."""
    url = f"{agent.url}/v1/agent/connect/authorize"
    if isinstance(body, str):
        return requests.post(url, data=body.encode(), timeout=5)
    return requests.post(url, json=body, timeout=5)


def decision(agent: Agent, source: str, destination: str) -> dict[str, Any]:
    response = authorize(agent, {"Target": destination, "ClientCertURI": spiffe(agent, source)})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def eventually(agent: Agent, source: str, destination: str, allowed: bool) -> dict[str, Any]:
    """Consul answers authorize from its agent cache, which follows writes within moments."""
    answers: list[dict[str, Any]] = []

    def settled() -> bool:
        answers.append(decision(agent, source, destination))
        return bool(answers[-1]["Authorized"] is allowed)

    wait_until(settled, 10, f"authorize {source} -> {destination} to answer {allowed}")
    return answers[-1]


def exact(agent: Agent, method: str, body: Any = None, **params: str) -> requests.Response:
    return requests.request(method, f"{agent.url}/v1/connect/intentions/exact", params=params, json=body, timeout=5)


# ------------------------------------------------------------------------------------------ authorize


def test_intentions_change_what_authorize_answers(agent: Agent, unique: Callable[[str], str]) -> None:
    web, db = unique("web"), unique("db")
    c = agent.client()
    assert decision(agent, web, db) == {"Authorized": True, "Reason": DEFAULT_REASON}

    assert c.connect.intentions.upsert(web, db, action="deny") is True
    denied = eventually(agent, web, db, allowed=False)
    assert denied["Reason"].startswith("Matched L4 intention: ")
    assert f"{web} => " in denied["Reason"]
    assert "DENY" in denied["Reason"]

    assert c.connect.intentions.upsert(web, db, action="allow") is True
    allowed = eventually(agent, web, db, allowed=True)
    assert allowed["Reason"].startswith("Matched L4 intention: ")

    assert c.connect.intentions.delete(web, db) is True
    wait_until(lambda: decision(agent, web, db)["Reason"] == DEFAULT_REASON, 10, "the default to apply again")
    assert decision(agent, web, db)["Authorized"] is True


def test_authorize_ignores_the_trust_domain_and_the_serial(agent: Agent, unique: Callable[[str], str]) -> None:
    web, db = unique("web"), unique("db")
    agent.client().connect.intentions.upsert(web, db, action="deny")
    foreign = spiffe(agent, web, trust_domain="11111111-2222-3333-4444-555555555555.consul")
    body = {"Target": db, "ClientCertURI": foreign, "ClientCertSerial": "de:ad:be:ef"}
    wait_until(lambda: authorize(agent, body).json()["Authorized"] is False, 10, "the deny to apply")


def test_authorize_accepts_post_only(agent: Agent) -> None:
    """PUT is 405, which is why py-consul's ``agent.connect.authorize`` (it sends PUT) fails on Consul."""
    response = requests.put(f"{agent.url}/v1/agent/connect/authorize", json={"Target": "db"}, timeout=5)
    assert response.status_code == 405
    assert response.text.strip() == "method PUT not allowed"
    assert "POST" in response.headers["Allow"]
    with pytest.raises(consul.ConsulException):
        agent.client().agent.connect.authorize("db", spiffe(agent, "web"), "01")


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({}, 400, "Target service must be specified"),
        ({"ClientCertURI": "spiffe://x.consul/ns/default/dc/dc1/svc/web"}, 400, "Target service must be specified"),
        ({"Target": "db"}, 400, NOT_CONNECT),
        ({"Target": "db", "ClientCertURI": "https://example.com/web"}, 400, NOT_CONNECT),
        ({"Target": "db", "ClientCertURI": "spiffe://x.consul/svc/web"}, 400, NOT_CONNECT),
        ({"Target": "db", "ClientCertURI": "spiffe://x.consul/agent/client/dc/dc1/id/node-1"}, 400, NOT_SERVICE),
        ({"Target": "db", "ClientCertURI": "spiffe://x.consul"}, 400, NOT_SERVICE),
        ({"Target": "db", "Bogus": 1}, 400, 'Request decode failed: json: unknown field "Bogus"'),
        ("", 400, "Request decode failed: EOF"),
    ],
)  # fmt: skip
def test_authorize_refuses_bad_requests_with_consuls_texts(agent: Agent, body: Any, status: int, text: str) -> None:
    response = authorize(agent, body)
    assert (response.status_code, response.text) == (status, text)


def test_authorize_denies_a_caller_from_another_partition_as_a_decision(
    agent: Agent, unique: Callable[[str], str]
) -> None:
    """Consul answers 200 with Authorized false (not a 400): the caller is denied, the agent is not failing."""
    trust_domain = agent.client().agent.connect.ca.roots()["TrustDomain"]
    caller = f"spiffe://{trust_domain}/ap/evil/ns/default/dc/dc1/svc/{unique('web')}"
    response = authorize(agent, {"Target": unique("db"), "ClientCertURI": caller})
    assert response.status_code == 200, response.text
    assert response.json() == {"Authorized": False, "Reason": 'Mismatched partitions: "evil" != "default"'}


def test_authorize_field_names_are_case_insensitive(agent: Agent, unique: Callable[[str], str]) -> None:
    response = authorize(agent, {"target": unique("db"), "clientcerturi": spiffe(agent, unique("web"))})
    assert response.status_code == 200
    assert response.json()["Authorized"] is True


# ------------------------------------------------------------------------------------------ precedence


def test_wildcard_intentions_follow_consuls_precedence(agent: Agent, unique: Callable[[str], str]) -> None:
    web, batch, db, cache = unique("web"), unique("batch"), unique("db"), unique("cache")
    c = agent.client()
    assert c.connect.intentions.upsert("*", db, action="deny")
    assert c.connect.intentions.upsert(web, db, action="allow")
    assert c.connect.intentions.upsert(web, "*", action="deny")
    try:
        eventually(agent, web, db, allowed=True)  # exact -> exact (9) beats * -> db (8)
        eventually(agent, batch, db, allowed=False)  # * -> db (8)
        eventually(agent, web, cache, allowed=False)  # web -> * (6)
        assert decision(agent, batch, cache) == {"Authorized": True, "Reason": DEFAULT_REASON}
        assert c.connect.intentions.check(web, db) is True
        assert c.connect.intentions.check(batch, db) is False

        matches = c.connect.intentions.match("destination", db)[db]
        ours = [
            (i["SourceName"], i["DestinationName"], i["Precedence"]) for i in matches if i["SourceName"] in (web, "*")
        ]
        assert ours == [(web, db, 9), ("*", db, 8), (web, "*", 6)]
        by_source = c.connect.intentions.match("source", web)[web]
        pairs = [(i["SourceName"], i["DestinationName"]) for i in by_source if i["DestinationName"] in (db, "*")]
        assert pairs == [(web, db), ("*", db), (web, "*")]
    finally:
        c.connect.intentions.delete(web, "*")


def test_an_l7_intention_makes_authorize_deny(agent: Agent, unique: Callable[[str], str]) -> None:
    """Authorize cannot see the request, so a rule with Permissions denies the connection. Consul wants
    the destination's protocol to be HTTP before it takes L7 rules; the dev agent does not check it."""
    web, api = unique("web"), unique("api")
    if agent.kind == "consul":
        defaults = {"Kind": "service-defaults", "Name": api, "Protocol": "http"}
        assert requests.put(f"{agent.url}/v1/config", json=defaults, timeout=5).status_code == 200
    c = agent.client()
    assert c.connect.intentions.upsert(web, api, permissions=L7_ALLOW_ALL) is True
    denied = eventually(agent, web, api, allowed=False)
    assert denied["Reason"].startswith("Matched L7 intention: ")
    assert c.connect.intentions.check(web, api) is False
    stored = c.connect.intentions.read(web, api)
    assert stored["Permissions"] == L7_ALLOW_ALL
    assert "Action" not in stored


# ------------------------------------------------------------------------------------------ exact CRUD


def test_an_intention_round_trips_through_py_consul(agent: Agent, unique: Callable[[str], str]) -> None:
    web, db = unique("web"), unique("db")
    c = agent.client()
    assert c.connect.intentions.upsert(web, db, action="allow", description="web reads db") is True
    stored = c.connect.intentions.read(web, db)
    assert {k: stored[k] for k in ("SourceNS", "SourceName", "DestinationNS", "DestinationName")} == {
        "SourceNS": "default",
        "SourceName": web,
        "DestinationNS": "default",
        "DestinationName": db,
    }
    assert (stored["Action"], stored["Description"], stored["SourceType"]) == ("allow", "web reads db", "consul")
    assert (stored["Precedence"], stored["Meta"]) == (9, {})
    assert stored["CreateIndex"] <= stored["ModifyIndex"]
    assert "ID" not in stored
    assert stored in c.connect.intentions.list()
    assert stored in c.connect.intentions.match("source", web)[web]
    assert c.connect.intentions.check(web, db) is True

    assert c.connect.intentions.delete(web, db) is True
    assert c.connect.intentions.read(web, db) is None
    assert c.connect.intentions.delete(web, db) is True  # deleting again is fine


def test_reading_a_missing_intention_is_404(agent: Agent, unique: Callable[[str], str]) -> None:
    response = exact(agent, "GET", source=unique("web"), destination=unique("db"))
    assert (response.status_code, response.text) == (404, "Intention not found")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_exact_needs_a_source_and_a_destination(agent: Agent, method: str) -> None:
    body = {"Action": "allow"} if method == "PUT" else None
    missing_source = exact(agent, method, body, destination="db")
    assert (missing_source.status_code, missing_source.text) == (500, "required query parameter 'source' not set")
    missing_destination = exact(agent, method, body, source="web")
    assert missing_destination.status_code == 500
    assert missing_destination.text == "required query parameter 'destination' not set"


def test_writes_refuse_an_empty_name(agent: Agent) -> None:
    response = exact(agent, "PUT", {"Action": "allow"}, source="web", destination="")
    assert (response.status_code, response.text) == (500, "required query parameter 'destination' not set")


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({}, 500, "Sources[0].Action must be set to 'allow' or 'deny'"),
        ({"Action": "permit"}, 500, "Sources[0].Action must be set to 'allow' or 'deny'"),
        ({"Action": "allow", "SourceType": "external"}, 500, "Sources[0].Type must be set to 'consul'"),
        ({"Action": "allow", "Meta": {"team": "a"}}, 500, "Meta must not be specified"),
        ({"Action": "deny", "Permissions": L7_ALLOW_ALL}, 500, ACTION_WITH_PERMISSIONS),
        ({"Action": "allow", "Bogus": True}, 400, 'Request decode failed: json: unknown field "Bogus"'),
        (None, 400, "Request decode failed: EOF"),
    ],
)  # fmt: skip
def test_invalid_writes_are_refused_with_consuls_texts(
    agent: Agent, unique: Callable[[str], str], body: Any, status: int, text: str
) -> None:
    web, db = unique("web"), unique("db")
    response = exact(agent, "PUT", body, source=web, destination=db)
    assert (response.status_code, response.text) == (status, text)
    assert agent.client().connect.intentions.read(web, db) is None


def test_a_partial_wildcard_is_refused(agent: Agent, unique: Callable[[str], str]) -> None:
    response = exact(agent, "PUT", {"Action": "deny"}, source="web*", destination=unique("db"))
    assert response.status_code == 500
    assert response.text == "Sources[0].Name: wildcard character '*' cannot be used with partial values"


def test_match_and_check_validate_their_parameters(agent: Agent) -> None:
    def get(path: str, **params: str) -> tuple[int, str]:
        response = requests.get(f"{agent.url}/v1/connect/intentions/{path}", params=params, timeout=5)
        return response.status_code, response.text

    assert get("match", name="db") == (500, "required query parameter 'by' not set")
    assert get("match", by="sideways", name="db") == (500, "'by' parameter must be one of 'source' or 'destination'")
    assert get("match", by="source") == (500, "required query parameter 'name' not set")
    assert get("match", by="source", name="a/b/c/d") == (
        500,
        "name \"a/b/c/d\" is invalid: input can contain at most two '/'",
    )
    assert get("check", destination="db") == (500, "required query parameter 'source' not set")
    assert get("check", source="web") == (500, "required query parameter 'destination' not set")


# ------------------------------------------------------------------------------------------ legacy and listing


def test_the_legacy_create_answers_an_id(agent: Agent, unique: Callable[[str], str]) -> None:
    web, db = unique("web"), unique("db")
    body = {"SourceName": web, "DestinationName": db, "Action": "deny", "SourceType": "consul", "Meta": {"team": "a"}}
    created = requests.post(f"{agent.url}/v1/connect/intentions", json=body, timeout=5)
    assert created.status_code == 200, created.text
    intention_id = created.json()["ID"]
    assert uuid.UUID(intention_id)
    stored = agent.client().connect.intentions.read(web, db)
    assert (stored["ID"], stored["Meta"], stored["Action"]) == (intention_id, {"team": "a"}, "deny")
    assert "CreatedAt" in stored
    eventually(agent, web, db, allowed=False)


def test_the_legacy_create_refuses_what_consul_refuses(agent: Agent, unique: Callable[[str], str]) -> None:
    url = f"{agent.url}/v1/connect/intentions"
    web, db = unique("web"), unique("db")
    agent.client().connect.intentions.upsert(web, db, action="allow")
    mixed = requests.post(url, json={"SourceName": unique("api"), "DestinationName": db, "Action": "allow"}, timeout=5)
    assert mixed.status_code == 500
    assert mixed.text == (
        f'cannot use legacy intention API to edit intentions with a destination of "{db}" '
        "after editing them via a service-intentions config entry"
    )
    undecodable = requests.post(url, json={"SourceName": web, "Bogus": 1}, timeout=5)
    assert (undecodable.status_code, undecodable.text) == (
        500,
        'Failed to decode request body: json: unknown field "Bogus"',
    )


def test_the_list_can_be_filtered(agent: Agent, unique: Callable[[str], str]) -> None:
    web, db = unique("web"), unique("db")
    c = agent.client()
    c.connect.intentions.upsert(web, db, action="allow")
    listed = c.connect.intentions.list(filter_expr=f'SourceName == "{web}"')
    assert [(i["SourceName"], i["DestinationName"]) for i in listed] == [(web, db)]


async def test_a_blocking_list_returns_when_an_intention_is_written(agent: Agent, unique: Callable[[str], str]) -> None:
    url = f"{agent.url}/v1/connect/intentions"
    web, db = unique("web"), unique("db")
    client = consul.aio.Consul(host=agent.host, port=agent.port)
    async with aiohttp.ClientSession() as http:
        try:
            async with http.get(url) as first:
                index = int(first.headers["X-Consul-Index"])
            blocked = asyncio.create_task(http.get(url, params={"index": str(index), "wait": "30s"}))
            await asyncio.sleep(0.2)
            assert not blocked.done(), "the query answered before anything was written"
            assert await client.connect.intentions.upsert(web, db, action="allow") is True
            async with await blocked as woken:
                assert int(woken.headers["X-Consul-Index"]) > index
                listed = await woken.json()
        finally:
            await client.close()
    assert (web, db) in [(i["SourceName"], i["DestinationName"]) for i in listed]
