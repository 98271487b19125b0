"""What this process runs: the meshlet, Python and grpcio versions, for ``meshlet_build_info`` and the trace
resource (``meshlet.version``, and ``service.version`` unless the app names its own)."""

from __future__ import annotations

import functools
import importlib.metadata
import platform

import grpc


@functools.cache
def build_labels() -> dict[str, str]:
    try:
        version = importlib.metadata.version("meshlet")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "unknown"
    return {"version": version, "python": platform.python_version(), "grpcio": grpc.__version__}
