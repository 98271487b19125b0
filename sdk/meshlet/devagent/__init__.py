"""`meshlet dev-agent`: an embedded agent that speaks the subset of Consul's HTTP API meshlet and common
clients use (agent services and checks, health with blocking queries, catalog, KV, status, Connect CA and
intentions), with Consul's field names, headers and status codes.

It is an island: it imports nothing from the meshlet pipelines, so it can be lifted out or swapped for a
real ``consul agent -dev`` without touching them. The state modules (catalog, kv, intentions, decode,
filtering) are pure; ``api/``, ``checks`` and ``server`` do the I/O.
"""
