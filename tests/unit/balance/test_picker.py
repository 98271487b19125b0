"""Which endpoint each attempt goes to: weights, least-loaded preference, round robin order, retries elsewhere."""

from __future__ import annotations

import random
from collections import Counter
from itertools import pairwise

import pytest

from meshlet.balance.picker import LoadTracker, Picker, Strategy
from meshlet.endpoints import Endpoint, EndpointSet


def endpoints(*weights: int) -> list[Endpoint]:
    return [Endpoint("10.0.0.1", 9000 + i, weight=w) for i, w in enumerate(weights)]


def picker(eps: list[Endpoint], strategy: Strategy = "p2c", load: LoadTracker | None = None, seed: int = 7) -> Picker:
    return Picker(eps, load=load or LoadTracker(), rng=random.Random(seed), strategy=strategy)


def shares(p: Picker, picks: int, avoid: list[Endpoint] | None = None) -> dict[Endpoint, float]:
    counts = Counter(p.pick(avoid) for _ in range(picks))
    return {e: counts[e] / picks for e in p.endpoints}


@pytest.mark.parametrize("strategy", ["p2c", "round_robin"])
def test_empty_snapshot_picks_nothing(strategy: Strategy) -> None:
    assert picker([], strategy).pick() is None
    assert picker([], strategy).pick(avoid=endpoints(1)) is None


@pytest.mark.parametrize("strategy", ["p2c", "round_robin"])
def test_single_endpoint_takes_every_call_even_a_retry(strategy: Strategy) -> None:
    only = endpoints(3)
    p = picker(only, strategy)
    assert {p.pick() for _ in range(10)} == {only[0]}
    assert p.pick(avoid=only) == only[0]


def test_idle_p2c_sends_traffic_in_proportion_to_weight() -> None:
    eps = endpoints(1, 2, 3, 4)
    observed = shares(picker(eps), 40_000)
    for e in eps:
        assert observed[e] == pytest.approx(e.weight / 10, abs=0.01)


def test_idle_p2c_spreads_equal_weights_evenly() -> None:
    eps = endpoints(1, 1, 1, 1, 1)
    observed = shares(picker(eps), 20_000)
    assert all(share == pytest.approx(0.2, abs=0.01) for share in observed.values())


def test_p2c_never_picks_the_busier_of_two_endpoints() -> None:
    eps = endpoints(1, 1)
    load = LoadTracker()
    for _ in range(3):
        load.started(eps[0])
    p = picker(eps, load=load)
    assert {p.pick() for _ in range(200)} == {eps[1]}


def test_p2c_never_picks_the_busiest_endpoint_while_others_are_idle() -> None:
    eps = endpoints(1, 1, 1, 1)
    load = LoadTracker()
    load.started(eps[2])
    p = picker(eps, load=load)
    assert {p.pick() for _ in range(2_000)} == {eps[0], eps[1], eps[3]}


def test_p2c_compares_calls_in_flight_per_unit_of_weight() -> None:
    heavy, light = endpoints(4, 1)
    load = LoadTracker()
    for _ in range(2):
        load.started(heavy)  # 2 / 4 = 0.5 per unit of weight
    load.started(light)  # 1 / 1 = 1.0
    p = picker([heavy, light], load=load)
    assert {p.pick() for _ in range(200)} == {heavy}


def test_p2c_keeps_in_flight_counts_level_under_sustained_load() -> None:
    eps = endpoints(1, 1, 1)
    load = LoadTracker()
    p = picker(eps, load=load)
    for _ in range(600):
        chosen = p.pick()
        assert chosen is not None
        load.started(chosen)
    counts = [load.in_flight(e) for e in eps]
    assert sum(counts) == 600
    assert max(counts) - min(counts) <= 2


def test_p2c_keeps_in_flight_proportional_to_weight_under_sustained_load() -> None:
    eps = endpoints(1, 3)
    load = LoadTracker()
    p = picker(eps, load=load)
    for _ in range(400):
        chosen = p.pick()
        assert chosen is not None
        load.started(chosen)
    assert (load.in_flight(eps[0]), load.in_flight(eps[1])) == (100, 300)


@pytest.mark.parametrize("strategy", ["p2c", "round_robin"])
def test_a_retry_goes_to_an_endpoint_the_call_has_not_tried(strategy: Strategy) -> None:
    eps = endpoints(1, 5, 1)
    p = picker(eps, strategy)
    assert eps[1] not in {p.pick(avoid=[eps[1]]) for _ in range(500)}
    assert {p.pick(avoid=[eps[0], eps[1]]) for _ in range(50)} == {eps[2]}


@pytest.mark.parametrize("strategy", ["p2c", "round_robin"])
def test_a_retry_reuses_tried_endpoints_when_no_other_is_left(strategy: Strategy) -> None:
    eps = endpoints(1, 1, 1)
    p = picker(eps, strategy)
    assert {p.pick(avoid=eps) for _ in range(300)} == set(eps)


def test_avoided_endpoints_are_recognised_by_address_even_after_a_weight_change() -> None:
    eps = endpoints(1, 1)
    reweighted = Endpoint(eps[0].address, eps[0].port, weight=9)
    p = picker(eps)
    assert {p.pick(avoid=[reweighted]) for _ in range(100)} == {eps[1]}


def test_endpoints_outside_the_snapshot_do_not_count_as_avoided() -> None:
    eps = endpoints(1, 1)
    gone = Endpoint("10.9.9.9", 1)
    p = picker(eps)
    assert {p.pick(avoid=[gone]) for _ in range(200)} == set(eps)


def test_a_retry_spreads_over_the_remaining_endpoints_by_weight() -> None:
    eps = endpoints(1, 3, 6)
    observed = shares(picker(eps), 20_000, avoid=[eps[2]])
    assert observed[eps[0]] == pytest.approx(0.25, abs=0.01)
    assert observed[eps[1]] == pytest.approx(0.75, abs=0.01)


def test_round_robin_visits_every_endpoint_once_per_turn() -> None:
    eps = endpoints(1, 1, 1)
    p = picker(eps, "round_robin")
    order = [p.pick() for _ in range(9)]
    first_turn = order[:3]
    assert set(first_turn) == set(eps)
    assert order == first_turn * 3


def test_round_robin_starts_at_a_random_place_so_clients_do_not_move_in_lockstep() -> None:
    eps = endpoints(1, 1, 1, 1)
    starts = {picker(eps, "round_robin", seed=seed).pick() for seed in range(40)}
    assert starts == set(eps)


def test_round_robin_gives_each_endpoint_turns_in_proportion_to_weight() -> None:
    eps = endpoints(1, 2, 5)
    observed = shares(picker(eps, "round_robin"), 800)
    assert [observed[e] for e in eps] == [1 / 8, 2 / 8, 5 / 8]


def test_round_robin_interleaves_a_heavy_endpoint_instead_of_sending_it_bursts() -> None:
    light, heavy = endpoints(1, 3)
    p = picker([light, heavy], "round_robin")
    order = [p.pick() for _ in range(40)]
    longest_run = max(len(run) for run in "".join("h" if e == heavy else "l" for e in order).split("l"))
    assert longest_run <= 3
    assert order.count(heavy) == 30


def test_round_robin_skips_avoided_endpoints_without_losing_its_order() -> None:
    eps = endpoints(1, 1, 1)
    p = picker(eps, "round_robin")
    picks = [p.pick(avoid=[eps[0]]) for _ in range(20)]
    assert set(picks) == {eps[1], eps[2]}
    assert all(a != b for a, b in pairwise(picks))


def test_round_robin_keeps_huge_weights_to_a_bounded_schedule() -> None:
    eps = endpoints(1, 100_000, 7_919)
    p = picker(eps, "round_robin")
    observed = shares(p, 20_000)
    assert observed[eps[0]] > 0
    assert observed[eps[1]] == pytest.approx(100_000 / 107_920, abs=0.01)


def test_same_seed_gives_the_same_picks() -> None:
    eps = endpoints(1, 2, 3)
    one, other = picker(eps, seed=3), picker(eps, seed=3)
    assert [one.pick() for _ in range(50)] == [other.pick() for _ in range(50)]


def test_picker_takes_an_endpoint_set() -> None:
    eps = EndpointSet(endpoints(1, 1)).with_tags(frozenset())
    assert len(Picker(eps, load=LoadTracker(), rng=random.Random(1))) == 2


def test_unknown_strategy_is_refused_with_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="p2c, round_robin"):
        Picker([], load=LoadTracker(), rng=random.Random(1), strategy="random")  # type: ignore[arg-type]


def test_repr_names_strategy_and_size() -> None:
    assert repr(picker(endpoints(1, 1, 1))) == "<Picker p2c over 3 endpoints>"
    assert repr(picker([], "round_robin")) == "<Picker round_robin over 0 endpoints>"


def test_in_flight_never_goes_below_zero() -> None:
    load = LoadTracker()
    (e,) = endpoints(1)
    load.finished(e)
    load.started(e)
    load.finished(e)
    load.finished(e)
    assert load.in_flight(e) == 0


def test_in_flight_counts_follow_an_endpoint_whose_weight_changed() -> None:
    load = LoadTracker()
    (e,) = endpoints(1)
    load.started(e)
    assert load.in_flight(Endpoint(e.address, e.port, weight=5)) == 1


def test_new_snapshots_see_calls_started_under_old_ones() -> None:
    eps = endpoints(1, 1)
    load = LoadTracker()
    load.started(eps[0])
    p = picker(eps, load=load)
    assert {p.pick() for _ in range(50)} == {eps[1]}


def test_retain_forgets_idle_endpoints_that_left_and_keeps_busy_ones() -> None:
    load = LoadTracker()
    idle, busy, staying = endpoints(1, 1, 1)
    load.started(busy)
    load.started(staying)
    load.started(idle)
    load.finished(idle)
    load.retain([staying])
    assert repr(load) == "<LoadTracker 2 in flight over 2 endpoints>"
    assert load.in_flight(busy) == 1
