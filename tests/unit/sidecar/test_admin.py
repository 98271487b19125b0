"""The admin pages as an operator reads them, rendered from plain data (no server, no sockets)."""

from __future__ import annotations

from typing import Any

from meshlet_sidecar.admin import (
    NOT_FOUND_HINT,
    clusters_text,
    describe_upstreams,
    gauge,
    metrics_text,
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


def test_metrics_count_endpoints_by_breaker_state_including_empty_states() -> None:
    text = metrics_text(True, [INVENTORY])

    assert 'meshlet_upstream_endpoints{upstream="inventory",state="closed"} 1' in text
    assert 'meshlet_upstream_endpoints{upstream="inventory",state="open"} 1' in text
    assert 'meshlet_upstream_endpoints{upstream="inventory",state="half_open"} 0' in text
    assert 'meshlet_upstream_in_flight{upstream="inventory"} 3' in text
    assert 'meshlet_upstream_panic{upstream="inventory"} 0' in text


def test_metrics_report_readiness_as_zero_or_one() -> None:
    assert "\nmeshlet_sidecar_ready 0\n" in metrics_text(False, [])
    assert "\nmeshlet_sidecar_ready 1\n" in metrics_text(True, [])


def test_metrics_declare_every_family_once_before_its_samples() -> None:
    lines = metrics_text(True, [INVENTORY, {**INVENTORY, "name": "payments"}]).splitlines()
    families = [line.split()[2] for line in lines if line.startswith("# TYPE")]

    assert len(families) == len(set(families))
    for line in lines:
        if not line.startswith("#"):
            name = line.split("{")[0].split()[0]
            assert lines.index(f"# TYPE {name} gauge") < lines.index(line)


def test_metrics_append_what_the_sidecar_adds_on_its_own_line() -> None:
    text = metrics_text(True, [], extra="meshlet_inbound_in_flight 2")

    assert text.endswith("\nmeshlet_inbound_in_flight 2\n")


def test_gauge_escapes_label_values_and_help_text() -> None:
    text = gauge("m", "help with \\ and\nnewline", [({"route": 'a"b\\c\nd'}, 1.5)])

    assert text.splitlines() == [
        "# HELP m help with \\\\ and\\nnewline",
        "# TYPE m gauge",
        'm{route="a\\"b\\\\c\\nd"} 1.5',
    ]


def test_gauge_writes_special_values_as_prometheus_spells_them() -> None:
    text = gauge("m", "h", [({"v": "a"}, float("inf")), ({"v": "b"}, float("-inf")), ({"v": "c"}, float("nan"))])

    assert text.splitlines()[2:] == ['m{v="a"} +Inf', 'm{v="b"} -Inf', 'm{v="c"} NaN']


def test_not_found_hint_lists_every_admin_endpoint() -> None:
    for path in ("/ready", "/live", "/clusters", "/config", "/metrics"):
        assert path in NOT_FOUND_HINT
