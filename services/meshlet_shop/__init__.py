"""The sample shop: services that show SDK mode and sidecar mode side by side (``python -m meshlet_shop.<name>``)."""
