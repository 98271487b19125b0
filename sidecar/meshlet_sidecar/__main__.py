"""``meshlet-sidecar``: the meshlet pipelines as a process beside any app.

Today it loads and validates the configuration (exit 2 with the field, the value and the fix when it is
invalid); the listeners, routing, registration and admin endpoints arrive with the sidecar issue.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from meshlet.config import load_config
from meshlet.errors import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshlet-sidecar", description=__doc__)
    parser.add_argument("--config", default=None, help="the YAML config file (default: $MESHLET_CONFIG)")
    args = parser.parse_args(argv)
    try:
        load_config(args.config)
    except ConfigError as error:
        print(f"meshlet-sidecar: {error}", file=sys.stderr)
        return 2
    print("meshlet-sidecar: the configuration is valid; the sidecar itself is not built yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
