"""Which upstream an app's outbound call is for: the local port it dialled (Consul Connect's
``local_bind_port``), else the route map from gRPC service names, else nothing, which the listener answers with
UNAVAILABLE naming the service so the operator knows which route to add. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Routes:
    """The routing table, built once from config."""

    by_port: Mapping[int, str]  # listener port -> upstream, for per-upstream local ports
    by_service: Mapping[str, str]  # "shop.inventory.v1.Inventory" -> "inventory"

    def route(self, method: str, local_port: int | None = None) -> str | None:
        """The upstream for a call to `method` (``/pkg.Service/Method``) that arrived on `local_port`."""
        if local_port is not None:
            upstream = self.by_port.get(local_port)
            if upstream is not None:
                return upstream
        service = method[1:].partition("/")[0]
        return self.by_service.get(service)

    def explain_miss(self, method: str) -> str:
        service = method[1:].partition("/")[0]
        return (
            f"no upstream for {service}: add `sidecar.routes: {{{service}: <upstream>}}` to the sidecar's config, "
            f"or give the upstream a local_port and dial that port"
        )
