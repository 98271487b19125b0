"""End users' tokens: JWTs verified against their issuers' published keys, shared by the edge (``edge.auth``) and the
inbound pipeline's opt-in stage (``inbound.jwt``), so that both judge a token by the same rules."""
