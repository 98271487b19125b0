"""``meshlet-edge``: HTTP/JSON for clients outside the mesh, from the protos' ``google.api.http`` annotations,
every call through the same outbound pipeline as ``mesh.channel()``.

Flags override the environment (``MESHLET_<SECTION>__<FIELD>``), which overrides the file. An invalid
configuration (a bad descriptor set, a route conflict) exits 2 with one line naming it; a port that another
process holds, a service no upstream's reflection described in time, or a registration Consul refused exits 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from meshlet.config import load_config
from meshlet.discovery.registration import RegistrationRefused
from meshlet.errors import CannotListen, ConfigError
from meshlet.runtime import run
from meshlet.telemetry.logging import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshlet-edge", description=__doc__)
    parser.add_argument("--config", default=None, help="the YAML config file (default: $MESHLET_CONFIG)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="the HTTP listener (edge.listen, default 0.0.0.0:8080)")
    parser.add_argument("--admin-addr", metavar="HOST:PORT", help="/ready, /live, /config, /metrics (edge.admin)")
    return parser


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for flag, key in (("listen", "edge.listen"), ("admin_addr", "edge.admin")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, overrides=overrides_from(args) or None)
    except ConfigError as error:
        print(f"meshlet-edge: {error}", file=sys.stderr)
        return 2
    configure_logging()
    from meshlet_edge.edge import Edge
    from meshlet_edge.reflection import NotDescribed

    try:
        edge = Edge(config)
        return run(edge.run(), prog="meshlet-edge")  # uvloop where installed, as every meshlet process
    except ConfigError as error:
        print(f"meshlet-edge: {error}", file=sys.stderr)
        return 2
    except (CannotListen, NotDescribed, RegistrationRefused) as error:  # a port taken, an upstream that never told
        print(f"meshlet-edge: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
