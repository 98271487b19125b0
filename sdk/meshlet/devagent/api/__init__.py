"""The agent's HTTP API, one module per Consul API section; each has ``add_routes(app)``."""
