"""The ``meshlet`` command: ``demo``, ``dev-agent`` (an embedded Consul-compatible agent), ``certs`` and ``trace``
(a trace from span files as a waterfall)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from meshlet.devagent.decode import DurationError, parse_duration
from meshlet.devagent.server import AgentConfig, serve
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
    demo.add_argument("--rate", type=_positive, default=40.0, metavar="PER_S", help="checkouts per second (default 40)")
    demo.add_argument("--no-faults", action="store_true", help="skip the fault script: steady traffic only")
    demo.add_argument("--keep-running", action="store_true", help="leave the mesh up after the report, until Ctrl-C")
    demo.add_argument(
        "--otlp-endpoint",
        default=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        metavar="URL",
        help="also send every trace there, e.g. Jaeger's http://localhost:4317 (default $OTEL_EXPORTER_OTLP_ENDPOINT)",
    )
    trace = commands.add_parser(
        "trace",
        help="show a trace as a waterfall, from span files",
        description="Show one trace from span files (telemetry.span_file) as a waterfall: spans under their "
        "parents on one time line, retry attempts with their endpoints, retries and breaker events inline.",
    )
    trace.add_argument("trace_id", nargs="?", help="a trace id or its prefix (default: the most retried, slowest)")
    trace.add_argument(
        "--spans",
        nargs="+",
        type=Path,
        default=[Path(p) for p in os.environ.get("MESHLET_TELEMETRY__SPAN_FILE", "").split(os.pathsep) if p],
        metavar="PATH",
        help="span files, one per process (default: $MESHLET_TELEMETRY__SPAN_FILE)",
    )
    trace.add_argument("--list", action="store_true", help="list the traces in the files instead, one line each")
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
        return _trace(args.trace_id, args.spans, list_only=args.list)
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
            asyncio.run(serve(config))
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


def _trace(trace_id: str | None, paths: Sequence[Path], *, list_only: bool) -> int:
    """``meshlet trace``: 0 shown, 1 no such trace (or no spans), 2 bad input (no or unreadable files)."""
    from rich.console import Console

    from meshlet.telemetry.span_file import SpanFileError
    from meshlet.telemetry.waterfall import find_trace, load_spans, pick_trace, render_waterfall, trace_summary, traces

    if not paths:
        print(
            "meshlet trace: no span files: pass --spans PATH... (the telemetry.span_file of each process)",
            file=sys.stderr,
        )
        return 2
    try:
        grouped = traces(load_spans(paths))
    except SpanFileError as error:
        print(f"meshlet trace: {error}", file=sys.stderr)
        return 2
    if not grouped:
        print(
            f"meshlet trace: no spans in {', '.join(map(str, paths))}: has the process made any calls?", file=sys.stderr
        )
        return 1
    console = Console()
    if list_only:
        for spans in sorted(grouped.values(), key=lambda spans: spans[0].start_ns):
            console.print(trace_summary(spans), highlight=False)
        return 0
    chosen = find_trace(grouped, trace_id) if trace_id else pick_trace(grouped)
    if chosen is None:
        print(
            f"meshlet trace: no single trace {trace_id!r} in the files ({len(grouped)} traces): "
            "run `meshlet trace --list --spans ...` to see their ids",
            file=sys.stderr,
        )
        return 1
    console.print(render_waterfall(grouped[chosen], width=max(10, min(60, console.width - 110))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
