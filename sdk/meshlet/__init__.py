"""meshlet: a lightweight gRPC service mesh for Python.

The public surface is exactly what ``__all__`` lists; every other module may change.
"""

__all__: list[str] = []
