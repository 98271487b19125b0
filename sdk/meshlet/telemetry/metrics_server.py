"""The SDK's opt-in metrics port (``telemetry.metrics_port``): ``GET /metrics`` in Prometheus text (OpenMetrics,
with exemplars, when the scraper's Accept header asks for it), served by aiohttp on the mesh's event loop, off
the data path. The sidecar serves the same page on its admin port.

It also answers ``/ready`` (200 while the process's grpc.health.v1 status is SERVING) and ``/live``: an SDK
service serves mTLS only, and Kubernetes' grpc probes speak plaintext, so its probes need a plaintext port."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from meshlet.config import listen_host
from meshlet.errors import CannotListen, describe_os_error

Exposition = Callable[[str | None], tuple[bytes, str]]  # the scraper's Accept header -> (page, content type)


class MetricsServer:
    """Serve `render(accept)` (``Metrics.exposition``) at ``http://host:port/metrics``; `start()` returns the bound
    port (0 picks a free one)."""

    def __init__(
        self, render: Exposition, host: str, port: int, *, health: Callable[[], str] = lambda: "SERVING"
    ) -> None:
        self._render = render
        self._health = health
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/live", self._live)
        # No access log (a scraper every few seconds), and a stop that never waits long on one.
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, listen_host(self.host.strip("[]")), self.port, reuse_address=True).start()
        except OSError as error:
            await runner.cleanup()
            address = f"{self.host}:{self.port}"
            fix = "set telemetry.metrics_port (MESHLET_TELEMETRY__METRICS_PORT) to a free one"
            problem = describe_os_error(error)
            raise CannotListen(f"cannot serve metrics on {address} ({problem}): {fix}", address=address) from None
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = self._render(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _ready(self, request: web.Request) -> web.Response:
        status = self._health()
        return web.Response(status=200 if status == "SERVING" else 503, text=f"grpc.health.v1 status: {status}\n")

    async def _live(self, request: web.Request) -> web.Response:
        return web.Response(text="live\n")  # answered at all: the event loop is turning

    def __repr__(self) -> str:
        state = "serving" if self._runner is not None else "stopped"
        return f"<MetricsServer http://{self.host}:{self.port}/metrics {state}>"
