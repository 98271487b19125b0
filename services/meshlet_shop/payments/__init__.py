"""payments: charges, once per idempotency key; a plain grpcio app behind a meshlet sidecar (no meshlet import)."""
