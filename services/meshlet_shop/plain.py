"""What every shop service shares at start: its command line (flags, with ``SHOP_*`` variables as fallbacks),
JSON log lines, and, for the plain grpcio apps that run behind a sidecar, the server with health, reflection
and a graceful stop on SIGTERM.

No meshlet import here: inventory and payments are apps that know nothing of the mesh.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from meshlet_shop.faults import STATUS_CODES, FaultInjector, Faults, FaultsError
from meshlet_shop.shared_store import MEMORY, store_url

DEFAULT_PORTS = {"gateway": 50050, "orders": 50051, "inventory": 50052, "payments": 50053}
STATEFUL = frozenset({"orders", "inventory"})  # the services that take --store (meshlet_shop.shared_store)
DRAIN_GRACE_S = 5.0
log = logging.getLogger("meshlet_shop")
N = TypeVar("N", int, float)
T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    """A shop service's settings after flags and environment."""

    name: str
    host: str
    port: int
    instance_id: str
    faults: Faults
    faults_file: Path | None
    store: str = MEMORY  # orders and inventory: meshlet_shop.shared_store's "memory" or a Redis URL

    def injector(self) -> FaultInjector:
        return FaultInjector(self.faults, instance=self.instance_id, path=self.faults_file)


def _env(environ: Mapping[str, str], key: str) -> str | None:
    value = environ.get(key)
    return value if value not in (None, "") else None


def _number(
    parse: Callable[[str], N], wanted: str, rejects: Callable[[N], bool], out_of_range: str
) -> Callable[[str], N]:
    """A converter for a flag and its variable alike: the errors it raises say what was wanted, and argparse and
    `parse_options` add which flag or variable was wrong."""

    def convert(text: str) -> N:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}") from None
        if rejects(value):
            raise argparse.ArgumentTypeError(out_of_range.format(value))
        return value

    return convert


_port = _number(int, "a port number (0..65535)", lambda p: not 0 <= p <= 65535, "{} is not a port number (0..65535)")
_rate = _number(
    float, "a number between 0 and 1", lambda r: not 0.0 <= r <= 1.0, "{:g} is not a share of calls between 0 and 1"
)
_latency = _number(float, "a number of milliseconds", lambda ms: ms < 0, "{:g} is below 0 milliseconds")


def _code(text: str) -> str:
    code = text.upper()
    if code not in STATUS_CODES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a gRPC status code name other than OK, e.g. UNAVAILABLE")
    return code


@dataclass(frozen=True)
class _Flag:
    """A flag, declared once: ``--latency-ms`` falls back to ``SHOP_LATENCY_MS``, then to `default`, which is text
    read as the flag's would be (None: unset, or derived later, as the instance id from the port)."""

    dest: str
    convert: Callable[[str], Any]
    metavar: str
    help: str
    default: str | None = None
    shown: str | None = None  # the default as --help words it, where that is not `default` itself

    @property
    def variable(self) -> str:
        return "SHOP_" + self.dest.upper()

    @property
    def option(self) -> str:
        return "--" + self.dest.replace("_", "-")

    @property
    def described(self) -> str:
        shown = self.default if self.shown is None else self.shown
        return f"{self.help} ({self.variable})" if shown is None else f"{self.help} ({self.variable}; default {shown})"


def _server_flags(name: str) -> tuple[_Flag, ...]:
    return (
        _Flag("port", _port, "N", "port to serve on, 0 for any free one", str(DEFAULT_PORTS[name])),
        _Flag("host", str, "HOST", "address to bind", "127.0.0.1", shown="127.0.0.1, 0.0.0.0 for all interfaces"),
        _Flag("instance_id", str, "ID", "this instance's name in logs and replies", shown="NAME-PORT"),
    )


_STATE_FLAGS = (
    _Flag(
        "store",
        store_url,
        "URL",
        "where the state lives: memory (this process only) or redis://HOST:PORT/DB, shared by every replica",
        MEMORY,
    ),
)

_FAULT_FLAGS = (
    _Flag("error_rate", _rate, "F", "share of calls to fail, 0..1", "0"),
    _Flag("error_code", _code, "CODE", "status code of injected failures", "UNAVAILABLE"),
    _Flag("latency_ms", _latency, "MS", "latency added to every call", "0"),
    _Flag("faults_file", Path, "PATH", "JSON file of faults, polled for changes"),
)


def parse_options(
    name: str, description: str, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Options:
    """Flags beat ``SHOP_*`` variables, which beat the defaults. A bad flag or variable exits 2 naming it."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog=f"python -m meshlet_shop.{name}",
        description=description,
        epilog="Every flag falls back to the SHOP_* variable named in its help. The faults file is JSON, e.g. "
        '{"error_rate": 0.5, "error_code": "UNAVAILABLE", "latency_ms": 0}, re-read when it changes.',
    )
    server_flags = _server_flags(name) + (_STATE_FLAGS if name in STATEFUL else ())
    faults = parser.add_argument_group("fault injection")
    for group, flags in ((parser, server_flags), (faults, _FAULT_FLAGS)):
        for flag in flags:
            group.add_argument(flag.option, type=flag.convert, metavar=flag.metavar, help=flag.described)
    args = parser.parse_args(argv)

    def pick(flag: _Flag) -> Any:
        value = getattr(args, flag.dest)
        if value is not None:
            return value
        raw = _env(environ, flag.variable)
        if raw is None:
            return None if flag.default is None else flag.convert(flag.default)
        try:
            return flag.convert(raw)
        except argparse.ArgumentTypeError as error:
            parser.error(f"environment variable {flag.variable}: {error}")

    # In declaration order, so that of two bad variables the first declared is the one named.
    values = {flag.dest: pick(flag) for flag in (*server_flags, *_FAULT_FLAGS)}
    try:
        knobs = Faults(
            error_rate=values["error_rate"], error_code=values["error_code"], latency_ms=values["latency_ms"]
        )
    except FaultsError as error:  # unreachable through the converters, kept as a guard
        parser.error(str(error))
    port = values["port"]
    return Options(
        name=name,
        host=values["host"],
        port=port,
        instance_id=f"{name}-{port}" if values["instance_id"] is None else values["instance_id"],
        faults=knobs,
        faults_file=values["faults_file"],
        store=values.get("store", MEMORY),
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


def run_app(main: Coroutine[Any, Any, T]) -> T:
    """Run a plain app as a user would (README: "Choosing the event loop"): on uvloop where it is installed,
    unless ``MESHLET_LOOP=asyncio`` asks for asyncio's own loop. The sidecar beside it validates and logs the
    setting; a plain app knows nothing of meshlet, so it only reads it."""
    if os.environ.get("MESHLET_LOOP", "").strip().lower() != "asyncio" and importlib.util.find_spec("uvloop"):
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


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
