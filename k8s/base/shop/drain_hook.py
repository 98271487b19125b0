"""preStop hook of a sidecar pod's app container: take this instance out of rotation before the app stops.

A native sidecar stops last, after the app, so its own shutdown (fail readiness, deregister, drain) would begin
only once the app is gone. This hook runs first: it puts the instance into Consul maintenance mode, a critical
check that the sidecar's TTL heartbeats do not clear, so callers' blocking queries drop it at once; then it waits
`DRAIN_NOTICE_S` for calls already routed here to arrive. Then the kubelet sends SIGTERM to the app, which drains
its in-flight calls; last, the sidecar deregisters (which ends the maintenance with the instance) and exits.

Usage: ``python drain_hook.py SERVICE [INBOUND_PORT]``, with CONSUL_HTTP_ADDR and POD_IP (and optionally
DRAIN_NOTICE_S) in the environment; the instance id is the one the sidecar registers, SERVICE-POD_IP-PORT.
It never fails the hook: a pod that cannot reach its agent still stops.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.parse
import urllib.request


def main() -> int:
    agent = os.environ.get("CONSUL_HTTP_ADDR", "http://127.0.0.1:8500")
    agent = agent if "://" in agent else f"http://{agent}"
    service, port = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "15006"
    service_id = f"{service}-{os.environ['POD_IP']}-{port}"
    query = urllib.parse.urlencode({"enable": "true", "reason": "pod terminating (meshlet preStop)"})
    url = f"{agent}/v1/agent/service/maintenance/{urllib.parse.quote(service_id)}?{query}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="PUT"), timeout=3):
            pass
        print(f"{service_id}: in maintenance; callers stop picking it", file=sys.stderr)
    except OSError as error:
        print(f"{service_id}: could not enter maintenance ({error}); stopping anyway", file=sys.stderr)
    time.sleep(float(os.environ.get("DRAIN_NOTICE_S", "3")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
