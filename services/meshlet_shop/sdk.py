"""Start an SDK-mode shop service (gateway, orders): ``meshlet.Mesh.from_env()`` for the config, ``mesh.server()``
and ``mesh.serve()`` to register in Consul and serve until SIGTERM, the shop's flags for port, host and faults.
A bad meshlet config exits 2 with meshlet's one-line message, never a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

import grpc

from meshlet import ConfigError, Mesh
from meshlet.errors import CannotListen
from meshlet.runtime import run as run_on_meshlet_loop
from meshlet.security.certs import TlsConfigError
from meshlet.telemetry.logging import configure_logging
from meshlet_shop.faults import FaultInjector
from meshlet_shop.plain import Options

log = logging.getLogger("meshlet_shop")
CERT_RETRY_S = 2.0

Register = Callable[[Mesh, grpc.aio.Server, FaultInjector], None]


async def serve_sdk(options: Options, register: Register, on_stop: Callable[[], Awaitable[None]] | None = None) -> int:
    """Register the servicers (`register` gets the mesh, for its channels), serve, drain on SIGTERM, return 0;
    `on_stop` closes what the servicers used (a store's connections) once the server has stopped."""
    os.environ.setdefault("MESHLET_SERVICE__NAME", options.name)
    try:
        mesh = Mesh.from_env()
        injector = options.injector()
        injector.reload()
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(mesh.close)
            if on_stop is not None:
                stack.push_async_callback(on_stop)
            stopping = _stop_on_signals(mesh)
            if not await _start(mesh, stopping):
                log.info("stopped while waiting for certificates", extra={"instance": options.instance_id})
                return 0
            server = mesh.server()
            register(mesh, server, injector)
            watch = asyncio.create_task(injector.watch())
            log.info("starting", extra={"instance": options.instance_id, "host": options.host, "port": options.port})
            try:
                await mesh.serve(server, options.port, host=options.host)
            finally:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
    except (ConfigError, TlsConfigError) as error:
        print(f"python -m meshlet_shop.{options.name}: {error}", file=sys.stderr)
        return 2
    except CannotListen as error:  # the port is taken or the address is not ours: meshlet's one line names it
        print(f"python -m meshlet_shop.{options.name}: {error}", file=sys.stderr)
        return 1
    return 0


def _stop_on_signals(mesh: Mesh) -> asyncio.Event:
    """SIGTERM/SIGINT from the start, not only once serving: a pod stopped while it waits for its certificates
    exits 0 at once instead of being killed at the end of its grace period. The event is set on the signal, and
    the mesh is asked to stop (``mesh.serve`` installs its own handlers when it runs, and returns at once if the
    signal came before)."""
    stopping = asyncio.Event()

    def stop() -> None:
        stopping.set()
        mesh.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    return stopping


async def _start(mesh: Mesh, stopping: asyncio.Event) -> bool:
    """Load the certificates; False when stopped by a signal first.

    Only Consul's Connect CA is waited for (retrying every CERT_RETRY_S, as the sidecar does): its agent may not
    be up yet, or may not have a CA leader (a pod starting beside it), and it will answer later. Any other
    TlsConfigError (files that do not exist or do not match) is permanent: it is raised, and the service exits 2
    with its one-line message rather than retry forever."""
    if mesh.config.tls.source != "off":
        log.info("loading certificates (tls.source %s)", mesh.config.tls.source)
    while not stopping.is_set():
        starting = asyncio.ensure_future(mesh.start())
        signalled = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        if not starting.done():  # a signal while the Connect CA is asked: stop asking
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, TlsConfigError):
                await starting
            break
        try:
            starting.result()
            return True
        except TlsConfigError as error:
            if mesh.config.tls.source != "consul":
                raise
            log.warning(
                "waiting for certificates from Consul's Connect CA (retrying every %gs): %s", CERT_RETRY_S, error
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), CERT_RETRY_S)
    return False


def run(options: Options, register: Register, on_stop: Callable[[], Awaitable[None]] | None = None) -> int:
    configure_logging()
    with contextlib.suppress(KeyboardInterrupt):
        return run_on_meshlet_loop(serve_sdk(options, register, on_stop), prog=f"meshlet_shop.{options.name}")
    return 0
