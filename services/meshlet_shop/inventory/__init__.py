"""inventory: stock levels and reservations, a plain grpcio app behind a meshlet sidecar (no meshlet import)."""
