"""The edge's response cache (``edge.cache``): rules and keys (rules), where entries live (stores), and the
request's path through them, with request coalescing and invalidation on writes (policy)."""
