"""Run every benchmark, or the ones named: ``python -m benchmarks [devagent_watchers ...]``."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = [
    "sdk_overhead",
    "devagent_watchers",
    "sidecar_overhead",
    "tracing_overhead",
    "metrics_overhead",
    "validation_overhead",
    "edge_overhead",
    "limits_overhead",
    "cache_overhead",
    "jwt_overhead",
]


def main(argv: list[str]) -> int:
    for name in argv or BENCHMARKS:
        if name not in BENCHMARKS:
            print(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
        module = importlib.import_module(f"benchmarks.{name}")
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
