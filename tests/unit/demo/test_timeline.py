"""Each instance's story over the run: leaving and rejoining Consul's passing set, breakers opening and closing."""

from __future__ import annotations

from meshlet.demo.report import bucket
from meshlet.demo.timeline import Cell, Snapshot, events, normalise_breakers, resolve, strip

A, B = "127.0.0.1:4001", "127.0.0.1:4002"
NAMES = {A: "inventory-1", B: "inventory-2"}


def test_an_instance_that_leaves_and_rejoins_the_passing_set_is_two_events() -> None:
    snapshots = [
        Snapshot(0.0, frozenset({A, B})),
        Snapshot(1.0, frozenset({A})),
        Snapshot(2.0, frozenset({A})),
        Snapshot(3.0, frozenset({A, B})),
    ]

    found = [(e.t, e.who, e.text.split()[0]) for e in events(snapshots, NAMES)]

    assert found == [(1.0, "inventory-2", "left"), (3.0, "inventory-2", "passing")]


def test_breaker_transitions_are_events_in_time_order() -> None:
    both = frozenset({A, B})
    snapshots = [Snapshot(0.0, both), Snapshot(1.0, both, {A: 2}), Snapshot(2.0, both, {A: 1}), Snapshot(3.0, both)]

    texts = [e.text for e in events(snapshots, NAMES)]

    assert texts == ["breaker opened: ejected", "breaker half-open: one probe", "breaker closed"]


def test_a_breaker_that_opened_and_closed_between_two_samples_still_shows() -> None:
    both = frozenset({A, B})
    snapshots = [
        Snapshot(0.0, both, entered={(A, "open"): 1.0}),
        Snapshot(1.0, both, entered={(A, "open"): 3.0, (A, "closed"): 2.0}),
        Snapshot(2.0, both, entered={(A, "open"): 3.0, (A, "closed"): 2.0}),
    ]

    texts = [(e.t, e.text) for e in events(snapshots, NAMES)]

    assert texts == [
        (0.0, "breaker opened: ejected"),
        (1.0, "breaker opened: ejected (x2)"),
        (1.0, "breaker closed (x2)"),
    ]
    assert strip(snapshots, A) == ["ejected", "ejected", "serving"]


def test_a_sample_without_consul_changes_nothing_and_draws_unknown() -> None:
    snapshots = [Snapshot(0.0, frozenset({A, B})), Snapshot(1.0, None), Snapshot(2.0, frozenset({A, B}))]

    assert events(snapshots, NAMES) == []
    assert strip(snapshots, B) == ["serving", "unknown", "serving"]


def test_leaving_consul_wins_over_the_breaker_in_the_strip() -> None:
    snapshots = [Snapshot(0.0, frozenset({A}), {B: 2}), Snapshot(1.0, frozenset({A, B}), {B: 2})]

    assert strip(snapshots, B) == ["unhealthy", "ejected"]


def test_a_long_run_is_bucketed_keeping_the_worst_state() -> None:
    cells: list[Cell] = ["serving"] * 100
    cells[42] = "ejected"

    bucketed = bucket(cells, width=50)

    assert len(bucketed) == 50
    assert bucketed.count("ejected") == 1


def test_metric_labels_resolve_to_known_endpoints_by_port() -> None:
    assert resolve(A, NAMES) == A
    assert resolve("ipv4:127.0.0.1:4002", NAMES) == B
    assert resolve("localhost:4002", NAMES) == B
    assert resolve("10.0.0.1:9999", NAMES) is None
    assert normalise_breakers({"ipv4:127.0.0.1:4001": 2, "elsewhere:1": 2}, NAMES) == {A: 2}
