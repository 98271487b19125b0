"""Which routes are deprecated and what they answer with: a method whose proto says ``deprecated = true`` (on the
method or on its service), or that ``edge.deprecations`` names, carries on every answer

- ``Deprecation: @<unix seconds>`` (RFC 9745): when it was deprecated. A proto carries no date, so the date is
  ``edge.deprecations.<name>.since``; without one, the moment the edge started ("deprecated by now", true on every
  answer; RFC 9745 has no dateless form, the draft's ``Deprecation: true`` was dropped), and a log line says so;
- ``Sunset: <HTTP-date>`` (RFC 8594) when ``sunset`` is configured: when it stops answering;
- ``Link: <url>; rel="successor-version"`` (RFC 5829) when ``successor`` is configured.

Decided once at start, per gRPC method path. Pure.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import format_datetime
from typing import Any

from google.protobuf import descriptor

from meshlet.config.schema import DeprecationPolicy, utc
from meshlet.errors import ConfigError
from meshlet_edge.routes import Route


@dataclass(frozen=True)
class Deprecation:
    """A deprecated method's answer headers and how the OpenAPI document describes it."""

    what: str  # the service or method that is deprecated
    since: datetime.datetime
    dated: bool  # since came from the config, not from the edge's start
    sunset: datetime.datetime | None = None
    successor: str | None = None

    def headers(self) -> dict[str, str]:
        found = {"Deprecation": f"@{int(self.since.timestamp())}"}
        if self.sunset is not None:
            found["Sunset"] = format_datetime(self.sunset, usegmt=True)
        if self.successor is not None:
            found["Link"] = f'<{self.successor}>; rel="successor-version"'
        return found

    def describe(self) -> str:
        said = f"**Deprecated** ({self.what}"
        said += f", since {self.since:%Y-%m-%d})" if self.dated else ")"
        if self.sunset is not None:
            said += f"; it stops answering on {self.sunset:%Y-%m-%d}"
        if self.successor is not None:
            said += f"; use {self.successor} instead"
        return said + "."

    def documented_headers(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "Deprecation": {
                "description": "RFC 9745: when this operation was deprecated, as @<unix seconds>.",
                "required": True,
                "schema": {"type": "string", "pattern": "^@-?[0-9]+$"},
            }
        }
        if self.sunset is not None:
            found["Sunset"] = {
                "description": "RFC 8594: when this operation stops answering (an HTTP-date).",
                "required": True,
                "schema": {"type": "string"},
            }
        if self.successor is not None:
            found["Link"] = {
                "description": 'The successor version: <url>; rel="successor-version".',
                "required": True,
                "schema": {"type": "string"},
            }
        return found


def method_of(route: Route) -> descriptor.MethodDescriptor:
    """The method descriptor `route` calls, from the pool its messages came from."""
    service, _, name = route.path[1:].rpartition("/")
    pool = route.request_type.DESCRIPTOR.file.pool
    method: descriptor.MethodDescriptor = pool.FindServiceByName(service).methods_by_name[name]
    return method


def deprecations(
    routes: Iterable[Route], configured: Mapping[str, DeprecationPolicy], started: datetime.datetime
) -> dict[str, Deprecation]:
    """The deprecated routes by gRPC path. A configured name that is neither a served service nor one of its
    methods is a ConfigError naming it."""
    routes = list(routes)
    known: set[str] = set()
    for route in routes:
        service = method_of(route).containing_service
        known.add(service.full_name)
        known.update(method.full_name for method in service.methods)
    for name in configured:
        if name not in known:
            raise ConfigError(
                f"edge.deprecations.{name}",
                name,
                "name a service of edge.services or one of its methods by full name (shop.orders.v1.Orders.GetOrder)",
            )
    found: dict[str, Deprecation] = {}
    for route in routes:
        method = method_of(route)
        service = method.containing_service
        policy = configured.get(method.full_name) or configured.get(service.full_name)
        if method.GetOptions().deprecated or method.full_name in configured:
            what = method.full_name
        elif service.GetOptions().deprecated or service.full_name in configured:
            what = service.full_name
        else:
            continue
        policy = policy or DeprecationPolicy()
        since = utc(policy.since) if policy.since is not None else started
        sunset = utc(policy.sunset) if policy.sunset is not None else None
        found[route.path] = Deprecation(what, since, policy.since is not None, sunset, policy.successor)
    return found


def undated(found: Mapping[str, Deprecation]) -> list[str]:
    """The deprecated services and methods that have no configured date: the start log names them."""
    return sorted({deprecation.what for deprecation in found.values() if not deprecation.dated})
