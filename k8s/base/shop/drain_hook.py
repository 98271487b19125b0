"""preStop hook of a sidecar pod's app container: take this instance out of rotation before the app stops.

A native sidecar stops last, after the app, so its own shutdown (fail readiness, deregister, drain) would begin
only once the app is gone. This hook runs first: it asks the sidecar (``POST /drain`` on its admin port, inside
the pod) to put the instance into Consul maintenance, so callers' blocking queries drop it at once; then it waits
`DRAIN_NOTICE_S` for calls already routed here to arrive. Then the kubelet sends SIGTERM to the app, which drains
its in-flight calls. If the pod is being deleted, the sidecar stops last and deregisters the instance. If only the
app restarts (a failed liveness probe runs this hook too), the sidecar ends the maintenance once the restarted
app is healthy. The sidecar owns the instance and its token: this hook needs neither Consul's address nor a token.

Usage: ``python drain_hook.py [ADMIN_PORT]`` (15000 by default), optionally with DRAIN_NOTICE_S in the
environment. It never fails the hook: a pod whose sidecar does not answer still stops.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request


def main() -> int:
    port = sys.argv[1] if len(sys.argv) > 1 else "15000"
    url = f"http://127.0.0.1:{port}/drain"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=3) as answer:
            print(f"sidecar: {answer.read().decode().strip()}", file=sys.stderr)
    except OSError as error:
        print(f"the sidecar did not take the drain ({error}); stopping anyway", file=sys.stderr)
    time.sleep(float(os.environ.get("DRAIN_NOTICE_S", "3")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
