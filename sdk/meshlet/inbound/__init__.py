"""The inbound data path: one module per stage, in request order.

identify -> authorize -> rate_limit -> span -> deadline, ending in the servicer (SDK) or the local app (sidecar).
"""
