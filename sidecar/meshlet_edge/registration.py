"""The edge in Consul: registered as ``service.name`` (``edge`` when the config leaves it unset) at its HTTP
listener, with the TTL check every meshlet process keeps (meshlet.discovery.registration), heart-beaten from the
edge's readiness, so a load balancer or a Consul-aware client sees it only while it can serve, and no more once
it drains."""

from __future__ import annotations

from collections.abc import Callable

from meshlet.config import Config, split_host_port
from meshlet.discovery.consul_client import ConsulFactory
from meshlet.discovery.registration import SERVING, Registration, registered_address

DEFAULT_NAME = "edge"
NOT_SERVING = "NOT_SERVING"


def named(config: Config) -> Config:
    """`config` with ``service.name`` set to ``edge`` when it has none: the name the edge registers, traces and
    asks for a certificate under, and that /config shows."""
    if config.service.name:
        return config
    return config.model_copy(update={"service": config.service.model_copy(update={"name": DEFAULT_NAME})})


def edge_registration(
    config: Config, consul: ConsulFactory, port: int, ready: Callable[[], tuple[bool, list[str]]]
) -> Registration:
    """The edge's instance on its bound HTTP `port`; its check passes while `ready` says so, and its output says
    what the edge still waits for when not."""
    name = config.service.name or DEFAULT_NAME
    host, _ = split_host_port(config.edge.listen)
    address = registered_address(host, config.service.address)

    def describe(status: str) -> str:
        is_ready, waiting = ready()
        return "edge ready: serving HTTP" if is_ready else f"{status}: edge waiting for: {', '.join(waiting)}"

    return Registration(
        consul,
        name=name,
        service_id=f"{name}-{address}-{port}",
        address=address,
        port=port,
        tags=tuple(config.service.tags),
        meta=dict(config.service.meta),
        check_ttl_s=config.service.check_ttl,
        deregister_after_s=config.service.deregister_critical_after,
        health=lambda: SERVING if ready()[0] else NOT_SERVING,
        describe=describe,
        notes="meshlet-edge heart-beats this check from its readiness (/ready on its admin port)",
    )
