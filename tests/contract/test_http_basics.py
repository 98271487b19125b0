"""Consul's cross-cutting HTTP behaviour: unknown paths, wrong methods, the root page."""

from __future__ import annotations

import requests

from tests.contract.conftest import Agent


def test_unknown_path_is_404_with_consuls_text(agent: Agent) -> None:
    response = requests.get(f"{agent.url}/v1/no/such/endpoint", timeout=5)
    assert response.status_code == 404
    assert response.text.startswith("Invalid URL path: not a recognized HTTP API endpoint")


def test_wrong_method_is_405_naming_the_method(agent: Agent) -> None:
    response = requests.post(f"{agent.url}/v1/status/leader", timeout=5)
    assert response.status_code == 405
    assert response.text.strip() == "method POST not allowed"
    assert "GET" in response.headers["Allow"]
