"""``meshlet-sidecar``: the meshlet pipelines as a process beside any app.

Flags override the environment (``MESHLET_<SECTION>__<FIELD>``), which overrides the file. An invalid
configuration exits 2 with one line naming the field, the value and what is allowed; a port that another
process holds exits 1 with one line naming it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from meshlet.config import load_config
from meshlet.errors import CannotListen, ConfigError
from meshlet.runtime import loop_from_environment, run
from meshlet.telemetry.logging import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshlet-sidecar", description=__doc__)
    parser.add_argument("--config", default=None, help="the YAML config file (default: $MESHLET_CONFIG)")
    parser.add_argument("--service", help="this app's service name in Consul (service.name)")
    parser.add_argument("--app-addr", metavar="HOST:PORT", help="the local app (sidecar.app)")
    parser.add_argument("--inbound-addr", metavar="HOST:PORT", help="mTLS listener (sidecar.inbound)")
    parser.add_argument("--outbound-addr", metavar="HOST:PORT", help="the app's way out (sidecar.outbound)")
    parser.add_argument("--admin-addr", metavar="HOST:PORT", help="admin HTTP (sidecar.admin)")
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="NAME=LOCAL_PORT",
        help="a local port that always routes to NAME (upstreams.NAME.local_port); repeatable",
    )
    return parser


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Flags as dotted config keys; a malformed --upstream is a ConfigError like any other bad value."""
    overrides: dict[str, Any] = {}
    for flag, key in (
        ("service", "service.name"),
        ("app_addr", "sidecar.app"),
        ("inbound_addr", "sidecar.inbound"),
        ("outbound_addr", "sidecar.outbound"),
        ("admin_addr", "sidecar.admin"),
    ):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    for item in args.upstream:
        name, sep, port = item.partition("=")
        if not sep or not name or not port.isdigit():
            raise ConfigError(f"--upstream {item}", item, "expected NAME=LOCAL_PORT, e.g. --upstream inventory=9001")
        overrides[f"upstreams.{name}.local_port"] = int(port)
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, overrides=overrides_from(args) or None)
        loop = loop_from_environment()
    except ConfigError as error:
        print(f"meshlet-sidecar: {error}", file=sys.stderr)
        return 2
    configure_logging()
    from meshlet_sidecar.sidecar import Sidecar

    try:
        return run(Sidecar(config).run(), prog="meshlet-sidecar", loop=loop)
    except ConfigError as error:
        print(f"meshlet-sidecar: {error}", file=sys.stderr)
        return 2
    except CannotListen as error:  # a port taken: one line naming it, as for a bad config
        print(f"meshlet-sidecar: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
