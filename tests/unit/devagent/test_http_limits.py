"""The dev agent keeps its own copy of meshlet's HTTP limits (it is an island): the two must agree."""

from __future__ import annotations

from meshlet import http_limits
from meshlet.devagent import http_limits as agent_limits


def test_the_dev_agent_serves_with_the_limits_every_meshlet_http_port_has() -> None:
    assert agent_limits.RUNNER_LIMITS == http_limits.RUNNER_LIMITS
    assert agent_limits.MAX_BODY_BYTES == http_limits.MAX_BODY_BYTES
