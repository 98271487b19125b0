"""The sidecar's admin HTTP server (127.0.0.1:15000 by default): what kubelet, Prometheus and operators ask.

Istio's port and Linkerd's and Envoy's paths: ``/ready`` (200 only once the sidecar can serve; 503 names what
it still waits for), ``/live``, ``/clusters`` (Envoy's: upstreams, endpoints, breaker states, in-flight),
``/config`` (the effective configuration, secrets redacted) and ``/metrics`` (Prometheus text, or OpenMetrics
with exemplars when the scraper asks for it, rendered by prometheus_client from the sidecar's registry).
``/app`` is the app's health alone: the liveness probe of an app that listens on loopback, out of the kubelet's
reach. ``POST /drain`` (the app container's preStop hook) puts the instance into Consul maintenance until the app
restarts; it answers only callers inside the pod (loopback), since the admin port also listens on the pod IP for
the kubelet and Prometheus. Admin keeps no state of its own: each
page is rendered from the callables the sidecar hands in, off the data path.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from meshlet.config import listen_host
from meshlet.errors import CannotListen, describe_os_error
from meshlet.resilience.breaker import CLOSED
from meshlet.telemetry.metrics_server import Exposition

PATHS = ("/ready", "/live", "/app", "/clusters[?format=json]", "/config", "/metrics", "POST /drain")
NOT_FOUND_HINT = "no such admin endpoint; try " + ", ".join(PATHS) + "\n"

Ready = Callable[[], tuple[bool, list[str]]]
Clusters = Callable[[], Sequence[Mapping[str, Any]]]
Drain = Callable[[], Awaitable[tuple[int, str]]]  # -> (HTTP status, text)
AppStatus = Callable[[], tuple[bool, str]]  # -> (the app is SERVING, what the last probe found)


class Describes(Protocol):
    """What /clusters needs of an upstream: meshlet.upstream.Upstream is one."""

    def describe(self) -> dict[str, Any]: ...


def describe_upstreams(upstreams: Iterable[Describes]) -> list[dict[str, Any]]:
    """Each upstream's `describe()` with its repr as ``summary``: the `clusters` callable Admin expects."""
    return [{"summary": repr(upstream), **upstream.describe()} for upstream in upstreams]


# ---------------------------------------------------------------------------------------------- pages


def ready_page(ready: bool, waiting_for: Sequence[str]) -> tuple[int, str]:
    """200 ``ready``, or 503 with what is missing, so an operator reads the cause in `kubectl describe`."""
    if ready:
        return 200, "ready\n"
    return 503, f"waiting for: {', '.join(waiting_for) or 'startup'}\n"


def clusters_text(clusters: Sequence[Mapping[str, Any]]) -> str:
    """One line per upstream (its summary), then one indented line per endpoint."""
    lines: list[str] = []
    for cluster in clusters:
        endpoints = cluster.get("endpoints", ())
        summary = cluster.get("summary") or (
            f"<Upstream {cluster.get('name')}: {len(endpoints)} endpoints | in flight: {cluster.get('in_flight', 0)}>"
        )
        lines.append(str(summary))
        lines.extend(
            f"  {e['address']}  weight={e.get('weight', 1)}  breaker={e.get('breaker', CLOSED)}"
            f"  in_flight={e.get('in_flight', 0)}"
            for e in endpoints
        )
    return "\n".join(lines) + "\n" if lines else "no upstreams yet\n"


def from_inside_the_pod(remote: str | None) -> bool:
    """Whether a peer address is loopback: only the pod's own containers may drain it."""
    try:
        address = ipaddress.ip_address((remote or "").split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback  # a dual-stack listener sees 127.0.0.1 as ::ffff:127.0.0.1
    return address.is_loopback


def app_page(healthy: bool, finding: str) -> tuple[int, str]:
    """The app's health alone (the liveness probe of an app that listens on loopback only): not /ready, which
    also waits for what a restart of the app cannot fix (certificates, discovery)."""
    return (200, f"app: {finding}\n") if healthy else (503, f"app: {finding}\n")


def no_app() -> tuple[bool, str]:
    return False, "none: this sidecar has no app (sidecar.app)"


async def nothing_to_drain() -> tuple[int, str]:
    return 409, "nothing to drain: this sidecar has no app (sidecar.app)\n"


# ---------------------------------------------------------------------------------------------- server


class Admin:
    """The admin HTTP server on `address` (``host:port``; port 0 picks a free one). Call `start()`, then `stop()`.

    `ready` returns (ready, what it waits for); `clusters` the upstreams' `describe()` dicts (see
    `describe_upstreams`); `config` the redacted configuration (``Config.redacted()``); `metrics` the /metrics
    page in the format the scraper accepts, and its content type (``Metrics.exposition``); `app` the app's
    health for ``/app``; `drain` serves ``POST /drain``.
    """

    def __init__(
        self,
        address: str,
        *,
        ready: Ready,
        clusters: Clusters,
        config: Callable[[], Mapping[str, Any]],
        metrics: Exposition,
        app: AppStatus = no_app,
        drain: Drain = nothing_to_drain,
    ) -> None:
        self.address = address
        self._ready = ready
        self._clusters = clusters
        self._config = config
        self._metrics = metrics
        self._app = app
        self._drain = drain
        self._runner: web.AppRunner | None = None

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[_hint_on_404])
        app.router.add_get("/ready", self._ready_page)
        app.router.add_get("/live", self._live_page)
        app.router.add_get("/app", self._app_page)
        app.router.add_get("/clusters", self._clusters_page)
        app.router.add_get("/config", self._config_page)
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_post("/drain", self._drain_page)
        return app

    async def start(self) -> int:
        """Serve; returns the bound port. Raises CannotListen when the port is taken."""
        host, _, port = self.address.rpartition(":")
        # No access log (kubelet probes every few seconds), and a stop that never waits long on a scraper.
        runner = web.AppRunner(self.build_app(), handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, listen_host(host.strip("[]")), int(port), reuse_address=True).start()
        except OSError as error:
            await runner.cleanup()
            fix = "set sidecar.admin (--admin-addr) to a free port"
            raise CannotListen(
                f"cannot serve the admin page on {self.address} ({describe_os_error(error)}): {fix}",
                address=self.address,
            ) from None
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = int(runner.addresses[0][1])
        self.address = f"{host}:{bound}"
        return bound

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _ready_page(self, request: web.Request) -> web.Response:
        status, text = ready_page(*self._ready())
        return web.Response(status=status, text=text)

    async def _live_page(self, request: web.Request) -> web.Response:
        return web.Response(text="live\n")  # answering at all is the proof: the event loop is turning

    async def _app_page(self, request: web.Request) -> web.Response:
        status, text = app_page(*self._app())
        return web.Response(status=status, text=text)

    async def _clusters_page(self, request: web.Request) -> web.Response:
        form = request.query.get("format", "text")
        if form == "json":
            return _json(list(self._clusters()))
        if form != "text":
            return web.Response(status=400, text=f"format must be text or json, not {form!r}\n")
        return web.Response(text=clusters_text(self._clusters()))

    async def _config_page(self, request: web.Request) -> web.Response:
        return _json(self._config())

    async def _metrics_page(self, request: web.Request) -> web.Response:
        body, content_type = self._metrics(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _drain_page(self, request: web.Request) -> web.Response:
        if not from_inside_the_pod(request.remote):
            return web.Response(status=403, text="POST /drain is for the pod's own containers: use 127.0.0.1\n")
        status, text = await self._drain()
        return web.Response(status=status, text=text)

    def __repr__(self) -> str:
        return f"<Admin http://{self.address} {'serving' if self._runner is not None else 'stopped'}>"


def _json(data: Any) -> web.Response:
    return web.Response(text=json.dumps(data, indent=2) + "\n", content_type="application/json")


@web.middleware
async def _hint_on_404(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPNotFound:
        return web.Response(status=404, text=NOT_FOUND_HINT)
    return response
