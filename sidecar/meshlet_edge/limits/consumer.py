"""Who a request is charged to: the authenticated caller by its `Caller.name` (``jwt:<sub>``, ``api_key:<owner>``)
with the plan its key or claim names, else its client address (``ip:<address>``) on the default plan. An IPv6
client is its /64 (``ip:2001:db8:1:2::/64``): one subscriber or host is handed a whole /64 (RFC 6177) and may use
any of its 2^64 addresses, so per address it could start afresh with every request.

The client address is the TCP peer's, unless that peer is one of ``edge.limits.trusted_proxies`` (a load
balancer in front of the edge): then ``X-Forwarded-For`` is read from the right, each trusted hop skipped, and the
first address not trusted is the client. Entries left of it were written by the client itself and are never
believed (a client cannot pick whose quota it spends). Pure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from meshlet_edge.caller import Caller

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port, as some proxies write it
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":")[0]
    try:
        found = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """The client's address: the peer's, or (behind trusted proxies) the right-most untrusted X-Forwarded-For
    entry. An entry that is no address stops the walk at the hop that reported it."""
    client = _address(peer or "")
    if client is None:
        return peer or "unknown"
    if not trusted or not _trusted(client, trusted):
        return client.compressed
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break
        client = address
        if not _trusted(address, trusted):
            break
    return client.compressed


def _subscriber(client: str) -> str:
    """An IPv4 address as it is; an IPv6 address as its /64."""
    if ":" not in client:
        return client
    try:
        return ipaddress.IPv6Network(f"{client}/64", strict=False).compressed
    except ValueError:
        return client


def consumer_of(caller: Caller | None, client: str) -> tuple[str, str | None]:
    """(the consumer's key, the plan its credentials name or None)."""
    if caller is None or caller.kind == "anonymous":
        return f"ip:{_subscriber(client)}", None
    return caller.name, caller.plan
