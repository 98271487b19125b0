"""Service discovery and registration through Consul: blocking-query watchers and TTL heartbeats."""
