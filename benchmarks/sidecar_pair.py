"""The sidecar hop the benchmarks measure: sidecar B beside the app, sidecar A routing Echo to B over mTLS.

It lives in one place so that every benchmark that times this hop builds the same pair, and differs only in
the config it adds to either side (intentions, rate limits, tracing).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.agents import Agent
from tests.support.processes import Processes
from tests.support.sidecars import SidecarProcess, start_sidecar, tls_files

ECHO_SERVICE = "meshlet_api.echo.v1.Echo"
CALLER = "a-svc"  # sidecar A's service name by default; its certificate must be issued beforehand, like `upstream`'s


def start_echo_pair(
    procs: Processes,
    folder: Path,
    certs: Path,
    agent: Agent,
    app: str,
    *,
    upstream: str,
    label: str,
    caller: str = CALLER,
    b_config: Mapping[str, Any] | None = None,
    a_config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[SidecarProcess, SidecarProcess]:
    """Start B (service `upstream`, in front of `app`), then A (service `caller`, routing Echo to `upstream`,
    which it may retry: Echo is idempotent); both ready when this returns. `b_config` and `a_config` add sections
    to each side's config; `label` names their config files and processes. Returns (A, B)."""
    b = start_sidecar(
        procs,
        folder,
        f"{label}-b",
        {"service": {"name": upstream}, "consul": {"address": agent.url}, "tls": tls_files(certs, upstream)}
        | dict(b_config or {}),
        app=app,
        env=env,
    )
    a = start_sidecar(
        procs,
        folder,
        f"{label}-a",
        {
            "service": {"name": caller},
            "consul": {"address": agent.url},
            "tls": tls_files(certs, caller),
            "sidecar": {"routes": {ECHO_SERVICE: upstream}},
            "upstreams": {upstream: {"retry": {"idempotent": [f"/{ECHO_SERVICE}/*"]}}},
        }
        | dict(a_config or {}),
        env=env,
    )
    return a, b
