"""The sample shop: services that show SDK mode and sidecar mode side by side (``python -m meshlet_shop.<name>``)."""

import os

# As meshlet's own processes (sdk/meshlet/__init__.py): no plain-text grpc core lines in a JSON log. Set here, the
# package every service's ``python -m`` imports first, before any of them imports grpc.
if "GRPC_TRACE" not in os.environ:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
