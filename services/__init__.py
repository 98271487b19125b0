"""The sample shop: services that show SDK mode and sidecar mode side by side (``python -m services.<name>``)."""
