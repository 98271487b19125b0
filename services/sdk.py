"""Start an SDK-mode shop service (gateway, orders): ``meshlet.Mesh.from_env()`` for the config, ``mesh.server()``
and ``mesh.serve()`` to register in Consul and serve until SIGTERM, the shop's flags for port, host and faults.
A bad meshlet config exits 2 with meshlet's one-line message, never a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable

import grpc

from meshlet import ConfigError, Mesh
from meshlet.security.certs import TlsConfigError
from meshlet.telemetry.logging import configure_logging
from services.faults import FaultInjector
from services.plain import Options

log = logging.getLogger("services")
CERT_RETRY_S = 2.0

Register = Callable[[Mesh, grpc.aio.Server, FaultInjector], None]


async def serve_sdk(options: Options, register: Register) -> int:
    """Register the servicers (`register` gets the mesh, for its channels), serve, drain on SIGTERM, return 0."""
    os.environ.setdefault("MESHLET_SERVICE__NAME", options.name)
    try:
        mesh = Mesh.from_env()
        injector = options.injector()
        injector.reload()
        await _start(mesh)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(mesh.close)
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
    except ConfigError as error:
        print(f"python -m services.{options.name}: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the port is taken, or the address is not ours
        print(
            f"python -m services.{options.name}: cannot serve on {options.host}:{options.port}: {error}",
            file=sys.stderr,
        )
        return 1
    return 0


async def _start(mesh: Mesh) -> None:
    """Certificates may come from a node agent that is not up yet (a pod starting beside it): retry, as the
    sidecar does, rather than crash-loop with a traceback."""
    while True:
        try:
            await mesh.start()
            return
        except TlsConfigError as error:
            log.warning("waiting for certificates: %s", error)
            await asyncio.sleep(CERT_RETRY_S)


def run(options: Options, register: Register) -> int:
    configure_logging()
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve_sdk(options, register))
    return 0
