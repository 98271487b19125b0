"""The edge's admin pages (``edge.admin``, default 127.0.0.1:15000), as the sidecar's admin serves them: ``/ready``
(503 naming what it still waits for, and while draining), ``/live``, ``/config`` (the effective configuration,
secrets redacted by ``Config.redacted``) and ``/metrics`` (the registry's exposition: Prometheus text, or
OpenMetrics with exemplars when the scraper asks) and, with ``edge.plans``, ``/usage?consumer=...`` (a
consumer's plan, bucket and quota windows, as JSON). Rendered from the callables the edge hands in, off the data
path; the edge and the sidecar may not import each other, so the few lines of pages live here too."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from meshlet.http_limits import MAX_BODY_BYTES
from meshlet.telemetry.metrics_server import Exposition

PATHS = ("/ready", "/live", "/config", "/metrics", "/usage")
NOT_FOUND_HINT = "no such admin endpoint; try " + ", ".join(PATHS) + "\n"

Ready = Callable[[], tuple[bool, list[str]]]  # -> (ready, what it still waits for)
Usage = Callable[[str], Awaitable[Mapping[str, Any]]]  # a consumer -> its rate-limit standing


def admin_app(
    *, ready: Ready, config: Callable[[], Mapping[str, Any]], metrics: Exposition, usage: Usage | None = None
) -> web.Application:
    async def ready_page(request: web.Request) -> web.Response:
        is_ready, waiting = ready()
        if is_ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"waiting for: {', '.join(waiting) or 'startup'}\n")

    async def live_page(request: web.Request) -> web.Response:
        return web.Response(text="live\n")  # answering at all is the proof: the event loop is turning

    async def config_page(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(config(), indent=2) + "\n", content_type="application/json")

    async def metrics_page(request: web.Request) -> web.Response:
        body, content_type = metrics(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def usage_page(request: web.Request) -> web.Response:
        consumer = request.query.get("consumer", "")
        if usage is None or not consumer:
            hint = "no edge.plans configured" if usage is None else "name one: /usage?consumer=ip:203.0.113.7"
            return web.Response(status=404 if usage is None else 400, text=f"/usage: {hint}\n")
        try:
            standing = await usage(consumer)
        except Exception as error:  # the store failed or was slow: say so rather than hang or 500
            return web.Response(status=503, text=f"/usage: the rate-limit store failed: {error!r}\n")
        return web.Response(text=json.dumps(standing, indent=2) + "\n", content_type="application/json")

    app = web.Application(middlewares=[_hint_on_404], client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/ready", ready_page)
    app.router.add_get("/live", live_page)
    app.router.add_get("/config", config_page)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/usage", usage_page)
    return app


@web.middleware
async def _hint_on_404(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return web.Response(status=404, text=NOT_FOUND_HINT)
