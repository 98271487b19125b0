"""What every shop service shares at start: its command line (flags, with ``SHOP_*`` variables as fallbacks),
JSON log lines, and, for the plain grpcio apps that run behind a sidecar, the server with health, reflection
and a graceful stop on SIGTERM.

No meshlet import here: inventory and payments are apps that know nothing of the mesh.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.faults import STATUS_CODES, FaultInjector, Faults, FaultsError

DEFAULT_PORTS = {"gateway": 50050, "orders": 50051, "inventory": 50052, "payments": 50053}
DRAIN_GRACE_S = 5.0
log = logging.getLogger("services")


@dataclass(frozen=True)
class Options:
    """A shop service's settings after flags and environment."""

    name: str
    host: str
    port: int
    instance_id: str
    faults: Faults
    faults_file: Path | None

    def injector(self) -> FaultInjector:
        return FaultInjector(self.faults, instance=self.instance_id, path=self.faults_file)


def _env(environ: Mapping[str, str], key: str) -> str | None:
    value = environ.get(key)
    return value if value not in (None, "") else None


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0..65535)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0..65535)")
    return port


def _rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number between 0 and 1") from None
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError(f"{rate:g} is not a share of calls between 0 and 1")
    return rate


def _code(text: str) -> str:
    code = text.upper()
    if code not in STATUS_CODES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a gRPC status code name other than OK, e.g. UNAVAILABLE")
    return code


def _latency(text: str) -> float:
    try:
        latency = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if latency < 0:
        raise argparse.ArgumentTypeError(f"{latency:g} is below 0 milliseconds")
    return latency


def parse_options(
    name: str, description: str, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Options:
    """Flags beat ``SHOP_*`` variables, which beat the defaults. A bad flag or variable exits 2 naming it."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{name}",
        description=description,
        epilog="Every flag falls back to the SHOP_* variable named in its help. The faults file is JSON, e.g. "
        '{"error_rate": 0.5, "error_code": "UNAVAILABLE", "latency_ms": 0}, re-read when it changes.',
    )
    parser.add_argument(
        "--port",
        type=_port,
        metavar="N",
        help=f"port to serve on, 0 for any free one (SHOP_PORT; default {DEFAULT_PORTS[name]})",
    )
    parser.add_argument(
        "--host", metavar="HOST", help="address to bind (SHOP_HOST; default 127.0.0.1, 0.0.0.0 for all interfaces)"
    )
    parser.add_argument(
        "--instance-id",
        metavar="ID",
        help="this instance's name in logs and replies (SHOP_INSTANCE_ID; default NAME-PORT)",
    )
    faults = parser.add_argument_group("fault injection")
    faults.add_argument(
        "--error-rate", type=_rate, metavar="F", help="share of calls to fail, 0..1 (SHOP_ERROR_RATE; default 0)"
    )
    faults.add_argument(
        "--error-code",
        type=_code,
        metavar="CODE",
        help="status code of injected failures (SHOP_ERROR_CODE; default UNAVAILABLE)",
    )
    faults.add_argument(
        "--latency-ms", type=_latency, metavar="MS", help="latency added to every call (SHOP_LATENCY_MS; default 0)"
    )
    faults.add_argument(
        "--faults-file", type=Path, metavar="PATH", help="JSON file of faults, polled for changes (SHOP_FAULTS_FILE)"
    )
    args = parser.parse_args(argv)

    def pick(flag: str, key: str, convert: Callable[[str], Any], default: Any) -> Any:
        value = getattr(args, flag)
        if value is not None:
            return value
        raw = _env(environ, key)
        if raw is None:
            return default
        try:
            return convert(raw)
        except argparse.ArgumentTypeError as error:
            parser.error(f"environment variable {key}: {error}")

    port = pick("port", "SHOP_PORT", _port, DEFAULT_PORTS[name])
    host = pick("host", "SHOP_HOST", str, "127.0.0.1")
    try:
        knobs = Faults(
            error_rate=pick("error_rate", "SHOP_ERROR_RATE", _rate, 0.0),
            error_code=pick("error_code", "SHOP_ERROR_CODE", _code, "UNAVAILABLE"),
            latency_ms=pick("latency_ms", "SHOP_LATENCY_MS", _latency, 0.0),
        )
    except FaultsError as error:  # unreachable through the converters, kept as a guard
        parser.error(str(error))
    return Options(
        name=name,
        host=host,
        port=port,
        instance_id=pick("instance_id", "SHOP_INSTANCE_ID", str, f"{name}-{port}"),
        faults=knobs,
        faults_file=pick("faults_file", "SHOP_FAULTS_FILE", Path, None),
    )


# ------------------------------------------------------------------------------------------ logging


_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonLines(logging.Formatter):
    """One JSON object per line: ``{"ts", "level", "logger", "msg", ...extra}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# ------------------------------------------------------------------------------------------ plain server


async def serve_plain(
    options: Options, injector: FaultInjector, register: Callable[[grpc.aio.Server], Sequence[str]]
) -> int:
    """Serve a plain grpcio app: `register` adds its servicers (which apply `injector`'s faults) and returns
    their full service names; `injector` follows the faults file while the server runs. Health and
    reflection come along. On SIGTERM/SIGINT: NOT_SERVING (so the sidecar's probe takes it out), stop accepting,
    let in-flight calls finish for a grace period, return 0."""
    server = grpc.aio.server()
    services = list(register(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    try:
        bound = server.add_insecure_port(f"{options.host}:{options.port}")
    except RuntimeError as error:
        log.error("cannot listen on %s:%d (%s): choose another --port", options.host, options.port, error)
        return 1
    await server.start()
    for service in ("", *services):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    injector.reload()
    watch = asyncio.create_task(injector.watch())
    log.info(
        "listening on %d",
        bound,
        extra={"service": options.name, "instance": options.instance_id, "host": options.host, "port": bound},
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await health_servicer.enter_graceful_shutdown()
        log.info("stopping: draining for up to %.1fs", DRAIN_GRACE_S, extra={"instance": options.instance_id})
        await server.stop(DRAIN_GRACE_S)
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        log.info("stopped", extra={"instance": options.instance_id})
    return 0
