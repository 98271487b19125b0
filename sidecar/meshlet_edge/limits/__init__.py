"""Rate limits and quotas per consumer plan (``edge.plans``, ``edge.limits``): see meshlet_edge.limits.policy."""
