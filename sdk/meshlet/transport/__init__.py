"""gRPC adaptation: endpoint channels, the MeshChannel multicallables, the server adapter, the raw-bytes codec."""
