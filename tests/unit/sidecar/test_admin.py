"""The admin pages as an operator reads them, rendered from plain data (no server, no sockets)."""

from __future__ import annotations

from typing import Any

from meshlet_sidecar.admin import (
    NOT_FOUND_HINT,
    app_page,
    clusters_text,
    describe_upstreams,
    from_inside_the_pod,
    ready_page,
)

INVENTORY: dict[str, Any] = {
    "summary": "<Upstream inventory: 2 endpoints, 1 admitted | breakers: 1 closed, 1 open | in flight: 3>",
    "name": "inventory",
    "endpoints": [
        {"address": "10.0.0.1:50051", "weight": 1, "in_flight": 3, "breaker": "closed"},
        {"address": "10.0.0.2:50051", "weight": 2, "in_flight": 0, "breaker": "open"},
    ],
    "panic": False,
    "in_flight": 3,
    "budget": "<RetryBudget ...>",
}


def test_ready_page_names_everything_still_missing() -> None:
    assert ready_page(False, ["certificates", "discovery of inventory", "app health"]) == (
        503,
        "waiting for: certificates, discovery of inventory, app health\n",
    )


def test_ready_page_says_ready_once_nothing_is_missing() -> None:
    assert ready_page(True, []) == (200, "ready\n")


def test_clusters_page_shows_each_upstream_then_its_endpoints() -> None:
    assert clusters_text([INVENTORY]).splitlines() == [
        INVENTORY["summary"],
        "  10.0.0.1:50051  weight=1  breaker=closed  in_flight=3",
        "  10.0.0.2:50051  weight=2  breaker=open  in_flight=0",
    ]


def test_clusters_page_summarises_an_upstream_described_without_a_summary() -> None:
    described = {key: value for key, value in INVENTORY.items() if key != "summary"}

    assert clusters_text([described]).splitlines()[0] == "<Upstream inventory: 2 endpoints | in flight: 3>"


def test_clusters_page_says_so_when_there_are_no_upstreams() -> None:
    assert clusters_text([]) == "no upstreams yet\n"


def test_describe_upstreams_puts_each_repr_beside_its_description() -> None:
    class Described:
        def describe(self) -> dict[str, Any]:
            return {"name": "payments", "endpoints": []}

        def __repr__(self) -> str:
            return "<Upstream payments: waiting for discovery>"

    assert describe_upstreams([Described()]) == [
        {"summary": "<Upstream payments: waiting for discovery>", "name": "payments", "endpoints": []}
    ]


def test_not_found_hint_lists_every_admin_endpoint() -> None:
    for path in ("/ready", "/live", "/app", "/clusters", "/config", "/metrics", "/drain"):
        assert path in NOT_FOUND_HINT


def test_only_the_pods_own_containers_may_drain() -> None:
    """POST /drain answers loopback peers only: the admin port also listens on the pod IP for probes and scrapes."""
    assert from_inside_the_pod("127.0.0.1")
    assert from_inside_the_pod("::1")
    assert from_inside_the_pod("::ffff:127.0.0.1")  # 127.0.0.1 as a dual-stack listener reports it
    assert not from_inside_the_pod("10.244.1.7")
    assert not from_inside_the_pod("fd00::7")
    assert not from_inside_the_pod(None)
    assert not from_inside_the_pod("not-an-address")


def test_app_page_is_the_apps_health_alone_with_what_the_probe_found() -> None:
    assert app_page(True, "SERVING (grpc.health.v1)") == (200, "app: SERVING (grpc.health.v1)\n")
    refused = "NOT_SERVING (app at 127.0.0.1:50052 is unreachable: Connection refused)"
    assert app_page(False, refused) == (503, f"app: {refused}\n")
