"""The ``meshlet`` command: ``demo``, ``dev-agent`` (an embedded Consul-compatible agent), ``certs``, ``trace``
(a trace from span files as a waterfall) and ``intention`` (Consul's intentions, as ``consul intention``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from meshlet.commands import intention as intention_command
from meshlet.commands import trace as trace_command
from meshlet.devagent.decode import DurationError, parse_duration
from meshlet.devagent.server import AgentConfig, serve
from meshlet.runtime import run
from meshlet.telemetry.logging import configure_logging


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:8500)")
    return host.strip("[]"), int(port)


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except DurationError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; use a Go duration such as 500ms, 30s or 2m") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative; use a positive duration such as 30s")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshlet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    agent = commands.add_parser(
        "dev-agent",
        help="run the embedded Consul-compatible agent",
        description="Serve the subset of Consul's HTTP API that meshlet and common clients use, until SIGTERM/SIGINT.",
    )
    agent.add_argument("--http-addr", type=_host_port, default=("127.0.0.1", 8500), metavar="HOST:PORT")
    agent.add_argument("--datacenter", default="dc1")
    agent.add_argument("--node", default=None, help="node name (default: the hostname)")
    agent.add_argument("--data-dir", type=Path, default=None, help="persist state here (default: memory only)")
    agent.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name, besides its address, that the agent answers (e.g. a DNS name it is reached by); repeatable",
    )
    agent.add_argument(
        "--reap-interval",
        type=_duration,
        default=30.0,
        metavar="DURATION",
        help="how often services critical past DeregisterCriticalServiceAfter are reaped (Consul: 30s)",
    )
    agent.add_argument(
        "--min-deregister-after",
        type=_duration,
        default=60.0,
        metavar="DURATION",
        help="floor for DeregisterCriticalServiceAfter (Consul: 1m)",
    )
    agent.add_argument(
        "--leaf-cert-ttl",
        type=_duration,
        default=72 * 3600.0,
        metavar="DURATION",
        help="lifetime of Connect leaf certificates (Consul: 72h)",
    )

    certs = commands.add_parser(
        "certs", help="a dev CA and SPIFFE certificates for local runs", add_help=False, prefix_chars="\0"
    )
    certs.add_argument("certs_args", nargs=argparse.REMAINDER)

    demo = commands.add_parser(
        "demo",
        help="run the mesh on this machine and show what it does",
        description="Start Consul (or use $CONSUL_HTTP_ADDR), the sample shop and its sidecars, drive traffic while "
        "faults are injected, and report what the mesh did. Exits 0 when callers saw at least 99% success.",
    )
    demo.add_argument("--duration", type=_seconds, default=30.0, metavar="DURATION", help="traffic time (default 30s)")
    demo.add_argument(
        "--rate",
        type=_positive,
        default=40.0,
        metavar="PER_S",
        help="checkouts per second, a quarter over HTTP/JSON through meshlet-edge (default 40)",
    )
    demo.add_argument("--no-faults", action="store_true", help="skip the fault script: steady traffic only")
    demo.add_argument("--keep-running", action="store_true", help="leave the mesh up after the report, until Ctrl-C")
    demo.add_argument(
        "--otlp-endpoint",
        default=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        metavar="URL",
        help="also send every trace there, e.g. Jaeger's http://localhost:4317 (default $OTEL_EXPORTER_OTLP_ENDPOINT)",
    )
    trace_command.add_parser(commands)
    intention_command.add_parser(commands)
    return parser


def _seconds(text: str) -> float:
    """A duration such as 30s or 2m, or a plain number of seconds; above zero."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = _duration(text)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above zero, e.g. 30s")
    return seconds


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; use e.g. 40") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above zero, e.g. 40")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "certs":
        from meshlet.security.dev_ca import certs_main

        return certs_main(list(args.certs_args))
    if args.command == "trace":
        return trace_command.run(args)
    if args.command == "intention":
        return intention_command.run(args)
    configure_logging()
    if args.command == "dev-agent":
        host, port = args.http_addr
        config = AgentConfig(
            http_host=host,
            http_port=port,
            datacenter=args.datacenter,
            data_dir=args.data_dir,
            reap_interval_s=args.reap_interval,
            min_deregister_after_s=args.min_deregister_after,
            leaf_cert_ttl_s=args.leaf_cert_ttl,
            allowed_hosts=tuple(args.allow_host),
            **({"node": args.node} if args.node else {}),
        )
        try:
            run(serve(config), prog="meshlet dev-agent")
        except OSError as exc:
            print(
                f"meshlet dev-agent: cannot listen on {host}:{port}: {exc.strerror}; pick another --http-addr",
                file=sys.stderr,
            )
            return 1
        return 0
    if args.command == "demo":
        from meshlet.demo import DemoOptions, run_demo

        options = DemoOptions(
            duration_s=args.duration,
            rate=args.rate,
            faults=not args.no_faults,
            keep_running=args.keep_running,
            otlp_endpoint=args.otlp_endpoint or None,
        )
        return run_demo(options)
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
