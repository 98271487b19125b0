"""Consul's Connect endpoints: CA roots and agent leaf certificates (blocking until renewal), authorize,
and intentions (exact CRUD, list, legacy create, match, check). The rules live in ``connect_ca`` and
``intentions``; this module parses requests and answers with Consul's status codes and texts.

Intention errors are plain Go errors in Consul, hence 500s rather than 400s.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any, TypedDict

from aiohttp import web

from meshlet.devagent.api import common
from meshlet.devagent.connect_ca import (
    Leaf,
    NotConnectIdentity,
    NotServiceIdentity,
    parse_service_identity,
    valid_service_name,
)
from meshlet.devagent.decode import DecodeError, Field
from meshlet.devagent.intentions import IntentionError, MatchBy, parse_name

RENEWAL_SLACK_S = 0.01  # wake a hair after the renewal point, never a hair before it
GO_BOOLS = {  # strconv.ParseBool
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}

_HEADER = {
    **{name: Field("str") for name in ("Name", "Exact", "Prefix", "Suffix", "Contains", "Regex")},
    **{name: Field("bool") for name in ("Present", "IgnoreCase", "Invert")},
}
_HTTP = {
    "PathExact": Field("str"),
    "PathPrefix": Field("str"),
    "PathRegex": Field("str"),
    "Header": Field("list", items="object", schema=_HEADER),
    "Methods": Field("list", items="str"),
}
_PERMISSION = {"Action": Field("str"), "HTTP": Field("object", schema=_HTTP), "JWT": Field("any")}
_INTENTION = {
    **{name: Field("str") for name in ("ID", "Description", "SourceNS", "SourceName", "DestinationNS")},
    **{name: Field("str") for name in ("DestinationName", "SourcePartition", "DestinationPartition")},
    **{name: Field("str") for name in ("SourcePeer", "SourceSamenessGroup", "SourceType", "Action")},
    "Permissions": Field("list", items="object", schema=_PERMISSION),
    "DefaultAddr": Field("str"),
    "DefaultPort": Field("int"),
    "Meta": Field("map", items="str"),
    **{name: Field("any") for name in ("Precedence", "CreatedAt", "UpdatedAt", "Hash")},
    **{name: Field("int") for name in ("CreateIndex", "ModifyIndex")},
}
_AUTHORIZE = {"Target": Field("str"), "ClientCertURI": Field("str"), "ClientCertSerial": Field("str")}


def add_routes(app: web.Application) -> None:
    """Register this section's routes (GET without HEAD, as Consul registers them)."""
    add = app.router.add_route
    add("GET", "/v1/agent/connect/ca/roots", agent_roots)
    add("GET", "/v1/agent/connect/ca/leaf/{service:.*}", leaf)
    add("POST", "/v1/agent/connect/authorize", authorize)
    add("GET", "/v1/connect/ca/roots", roots)
    add("GET", "/v1/connect/intentions", list_intentions)
    add("POST", "/v1/connect/intentions", create_legacy)
    add("GET", "/v1/connect/intentions/exact", read_exact)
    add("PUT", "/v1/connect/intentions/exact", upsert_exact)
    add("DELETE", "/v1/connect/intentions/exact", delete_exact)
    add("GET", "/v1/connect/intentions/match", match)
    add("GET", "/v1/connect/intentions/check", check)


# ------------------------------------------------------------------------------------------ CA


async def agent_roots(request: web.Request) -> web.StreamResponse:
    agent = request.app[common.AGENT]
    options = common.query_options(request, agent.config.datacenter)
    ca = agent.state.ca
    index = await common.block(agent.changes, options, lambda: ca.roots_index)
    return common.set_meta(common.json_response(ca.roots()), index)


async def roots(request: web.Request) -> web.StreamResponse:
    """The server's view of the roots; ``?pem=true`` answers the PEM chain instead of JSON."""
    agent = request.app[common.AGENT]
    options = common.query_options(request, agent.config.datacenter)
    pem = request.query.get("pem", "")
    if pem and pem not in GO_BOOLS:
        raise common.bad_request("The 'pem' query parameter must be a boolean value")
    ca = agent.state.ca
    index = await common.block(agent.changes, options, lambda: ca.roots_index)
    if pem and GO_BOOLS[pem]:
        chain = web.Response(text=ca.root.cert_pem, headers={"Content-Type": "application/pem-certificate-chain"})
        return common.set_meta(chain, index)
    return common.set_meta(common.json_response(ca.roots()), index)


async def leaf(request: web.Request) -> web.StreamResponse:
    """The service's leaf (by service NAME; it need not be registered). With ``?index=N`` the answer waits
    for a leaf newer than N: a renewal, due at the leaf's soft expiry, or a new root."""
    agent = request.app[common.AGENT]
    service = request.match_info["service"]
    options = common.query_options(request, agent.config.datacenter)
    if not service:
        raise common.ConsulError(500, "URI must be either service, agent, server, or kind")
    if not valid_service_name(service):
        raise common.bad_request(
            f"Invalid service name {service!r}: the dev agent issues leaves only for valid service names (letters, "
            "digits and dashes, 1 to 63 characters, starting and ending with a letter or digit)"
        )
    issued = agent.state.ca.leaf(service)
    if issued.modify_index <= options.index:
        issued = await _renewed_leaf(request, service, options)
    response = common.json_response(issued.to_json())
    response.headers["X-Consul-Index"] = str(issued.modify_index)
    return response


async def _renewed_leaf(request: web.Request, service: str, options: common.QueryOptions) -> Leaf:
    """Sleep until a write moves the index or the leaf's renewal falls due, whichever comes first, so a
    holder gets its renewed leaf even when nothing else is written."""
    agent = request.app[common.AGENT]
    ca = agent.state.ca
    loop = asyncio.get_running_loop()
    deadline = loop.time() + common.wait_timeout(options.wait_s)
    issued = ca.leaf(service)
    while issued.modify_index <= options.index and not agent.changes.closed:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        due_in = ca.renewal_due_in(service) or 0.0
        await agent.changes.wait(min(remaining, due_in + RENEWAL_SLACK_S))
        issued = ca.leaf(service)
    return issued


async def authorize(request: web.Request) -> web.StreamResponse:
    """May the holder of ``ClientCertURI`` connect to ``Target``? Intentions decide, else the default
    (allow: ACLs are off). Neither the trust domain nor the serial is checked, as in Consul."""
    agent = request.app[common.AGENT]
    body = await common.read_json(request, _AUTHORIZE)
    target = body.get("Target", "")
    if not target:
        raise common.bad_request("Target service must be specified")
    try:
        client = parse_service_identity(body.get("ClientCertURI", ""))
    except NotServiceIdentity:
        raise common.bad_request("ClientCertURI not a valid Service identifier") from None
    except NotConnectIdentity:
        raise common.bad_request("ClientCertURI not a valid Connect identifier") from None
    if client.partition not in ("", "default"):  # Consul's answer: a decision (deny), not a bad request
        reason = f'Mismatched partitions: "{client.partition}" != "default"'
        return common.json_response({"Authorized": False, "Reason": reason})
    decision = agent.state.intentions.decide(client.service, target, source_namespace=client.namespace)
    return common.json_response({"Authorized": decision.allowed, "Reason": decision.reason})


# ------------------------------------------------------------------------------------------ intentions


async def list_intentions(request: web.Request) -> web.StreamResponse:
    agent = request.app[common.AGENT]
    options = common.query_options(request, agent.config.datacenter)
    store = agent.state.intentions
    index = await common.block(agent.changes, options, lambda: store.modify_index)
    rendered = common.apply_filter([i.to_json() for i in store.all()], options.filter)
    return common.set_meta(common.json_response(rendered), index)


async def create_legacy(request: web.Request) -> web.StreamResponse:
    """The deprecated create-by-body; answers ``{"ID": <uuid>}``. A bad body is a 500 here, not a 400."""
    agent = request.app[common.AGENT]
    try:
        body = await common.read_json(request, _INTENTION)
    except DecodeError as exc:
        raise common.ConsulError(500, f"Failed to decode request body: {exc}") from None
    _check_datacenter(request)
    if body.get("ID"):
        raise common.ConsulError(500, "ID must be empty when creating a new intention")
    try:
        created = agent.state.intentions.create_legacy(
            str(uuid.uuid4()),
            _rfc3339_nano(time.time()),
            source=body.get("SourceName", ""),
            destination=body.get("DestinationName", ""),
            **_rule(body),
            meta=body.get("Meta"),
        )
    except IntentionError as exc:
        raise common.ConsulError(500, str(exc)) from None
    return common.json_response({"ID": created.legacy_id})


async def read_exact(request: web.Request) -> web.StreamResponse:
    agent = request.app[common.AGENT]
    options = common.query_options(request, agent.config.datacenter)
    source, destination = _exact_pair(request, reading=True)
    store = agent.state.intentions
    index = await common.block(agent.changes, options, lambda: store.modify_index)
    from_peer = request.query["source"].startswith("peer:")  # peers are not modelled: nothing matches
    found = None if from_peer else store.get(source, destination)
    if found is None:
        raise common.not_found("Intention not found")
    return common.set_meta(common.json_response(found.to_json()), index)


async def upsert_exact(request: web.Request) -> web.StreamResponse:
    agent = request.app[common.AGENT]
    source, destination = _exact_pair(request)
    body = await common.read_json(request, _INTENTION)
    _check_datacenter(request)
    try:
        agent.state.intentions.upsert(source, destination, **_rule(body), meta=body.get("Meta"))
    except IntentionError as exc:
        raise common.ConsulError(500, str(exc)) from None
    return common.json_response(True)


async def delete_exact(request: web.Request) -> web.StreamResponse:
    agent = request.app[common.AGENT]
    source, destination = _exact_pair(request)
    _check_datacenter(request)
    agent.state.intentions.delete(source, destination)
    return common.json_response(True)


async def match(request: web.Request) -> web.StreamResponse:
    """``{name: [intentions in evaluation order]}`` for each ``name`` on the ``by`` side."""
    agent = request.app[common.AGENT]
    options = common.query_options(request, agent.config.datacenter)
    by = request.query.getall("by", [])
    if len(by) != 1:
        raise common.ConsulError(500, "required query parameter 'by' not set")
    if by[0] not in ("source", "destination"):
        raise common.ConsulError(500, "'by' parameter must be one of 'source' or 'destination'")
    names = request.query.getall("name", [])
    if not names:
        raise common.ConsulError(500, "required query parameter 'name' not set")
    parsed = {name: _parse("name", name) for name in names}
    store = agent.state.intentions
    index = await common.block(agent.changes, options, lambda: store.modify_index)
    side: MatchBy = "source" if by[0] == "source" else "destination"
    body = {name: [i.to_json() for i in store.match(side, service)] for name, service in parsed.items()}
    return common.set_meta(common.json_response(body), index)


async def check(request: web.Request) -> web.StreamResponse:
    """Would a connection from ``source`` to ``destination`` be allowed? L7 intentions count as deny."""
    agent = request.app[common.AGENT]
    common.query_options(request, agent.config.datacenter)
    source_type = request.query.get("source-type") or "consul"
    source, destination = request.query.getall("source", []), request.query.getall("destination", [])
    if len(source) != 1:
        raise common.ConsulError(500, "required query parameter 'source' not set")
    if len(destination) != 1:
        raise common.ConsulError(500, "required query parameter 'destination' not set")
    source_name = _parse("source", source[0]) if source_type == "consul" else source[0]
    destination_name = _parse("destination", destination[0])
    if source_type != "consul":
        raise common.ConsulError(500, f'unsupported SourceType: "{source_type}"')
    decision = agent.state.intentions.decide(source_name, destination_name)
    return common.json_response({"Allowed": decision.allowed})


# ------------------------------------------------------------------------------------------ helpers


def _exact_pair(request: web.Request, *, reading: bool = False) -> tuple[str, str]:
    """``?source=&destination=``, each exactly once, parsed to service names. Writes refuse empty names;
    reads accept a ``peer:<peer>/`` source."""
    source, destination = (request.query.getall(side, []) for side in ("source", "destination"))
    for side, values in (("source", source), ("destination", destination)):
        if len(values) != 1 or not (values[0] or reading):
            raise common.ConsulError(500, f"required query parameter '{side}' not set")
    return _parse("source", source[0], allow_peer=reading), _parse("destination", destination[0])


def _parse(label: str, text: str, *, allow_peer: bool = False) -> str:
    try:
        return parse_name(text, allow_peer=allow_peer)
    except IntentionError as exc:
        raise common.ConsulError(500, f"{label} {json.dumps(text, ensure_ascii=False)} is invalid: {exc}") from None


class _Rule(TypedDict):
    action: str
    permissions: list[dict[str, Any]]
    description: str
    source_type: str


def _rule(body: dict[str, Any]) -> _Rule:
    """The fields of an intention body that a write keeps (names come from the query, indexes are ours)."""
    return {
        "action": body.get("Action", ""),
        "permissions": body.get("Permissions", []),
        "description": body.get("Description", ""),
        "source_type": body.get("SourceType", ""),
    }


def _check_datacenter(request: web.Request) -> None:
    """Writes only parse ``?dc``: another datacenter cannot be reached from a dev agent."""
    dc = request.query.get("dc")
    if dc and dc != request.app[common.AGENT].config.datacenter:
        raise common.ConsulError(500, "No path to datacenter")


def _rfc3339_nano(moment: float) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: trailing zeros of the fraction dropped."""
    stamp = datetime.fromtimestamp(moment, UTC)
    fraction = f"{stamp.microsecond:06d}".rstrip("0")
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"
