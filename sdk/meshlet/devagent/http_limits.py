"""The dev agent's HTTP limits: the values of meshlet.http_limits (the README's "Limits"), kept here because the
dev agent is an island that imports nothing of meshlet outside itself; tests/unit/devagent/test_http_limits.py
checks that the two agree."""

from __future__ import annotations

from typing import Any

HEADER_TIMEOUT_S = 10.0  # aiohttp's keep-alive timer: runs until a request's headers are complete (slowloris)
MAX_BODY_BYTES = 1024 * 1024  # 413 past it; KV values stop at 512 KiB, as Consul's

RUNNER_LIMITS: dict[str, Any] = {
    "keepalive_timeout": HEADER_TIMEOUT_S,
    "max_line_size": 8190,
    "max_field_size": 8190,
    "max_headers": 128,
}
