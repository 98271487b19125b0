"""The outbound data path: one module per stage, in request order.

Per call: span -> deadline -> bulkhead -> retry; per attempt: attempt_span -> pick -> report -> send.
The SDK feeds typed calls from generated stubs and the sidecar feeds raw bytes; both run these stages.
"""
