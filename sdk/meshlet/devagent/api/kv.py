"""Placeholder: Consul's /v1/kv endpoints (being written)."""

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Register this section's routes."""
