"""meshlet-sidecar: the meshlet pipelines as a process deployed beside any app."""
