"""Pipeline tests: the real outbound stages, built by a real Upstream, over a scripted transport.

Only the network is replaced (tests/pipeline/scripted.py stands where grpc.aio channels would); discovery is
fed by hand, the clock is fake and every backoff sleep only advances it, so nothing here sleeps or opens a
socket, and every assertion is on what a caller, a server or an event listener would see.
"""
