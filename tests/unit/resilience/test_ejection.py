from __future__ import annotations

import random

import pytest

from meshlet.endpoints import Endpoint
from meshlet.resilience.breaker import EndpointBreaker
from meshlet.resilience.ejection import Admission, OutlierEjection
from tests.unit.resilience import FakeClock

A, B, C, D = (Endpoint("127.0.0.1", port) for port in (5001, 5002, 5003, 5004))


class Fleet:
    """Endpoints with real breakers on one fake clock."""

    def __init__(self, *endpoints: Endpoint) -> None:
        self.clock = FakeClock()
        self.endpoints = endpoints
        self.breakers = {
            e: EndpointBreaker("inventory", e, clock=self.clock, rng=random.Random(i), jitter=0.0)
            for i, e in enumerate(endpoints)
        }

    def open(self, *endpoints: Endpoint) -> None:
        for endpoint in endpoints:
            for _ in range(5):
                self.breakers[endpoint].record_failure()

    def admitted(self, ejection: OutlierEjection | None = None) -> Admission:
        return (ejection or OutlierEjection()).admitted(self.endpoints, self.breakers)


def test_all_healthy_endpoints_are_admitted_as_they_are() -> None:
    fleet = Fleet(A, B, C)
    admission = fleet.admitted()
    assert admission == Admission((A, B, C))
    assert all(admission.admits(e) for e in (A, B, C))


def test_endpoint_with_an_open_breaker_is_ejected() -> None:
    fleet = Fleet(A, B, C, D)
    fleet.open(B)
    admission = fleet.admitted()
    assert admission.endpoints == (A, C, D)
    assert admission.ejected == (B,)
    assert not admission.panic
    assert admission.review_at == fleet.breakers[B].reopen_at


def test_ejection_never_exceeds_its_cap_but_always_allows_one() -> None:
    fleet = Fleet(A, B, C, D)
    fleet.open(A, B)
    admission = fleet.admitted(OutlierEjection(max_ejection_ratio=0.1, panic_threshold=0.0))
    assert len(admission.ejected) == 1  # 10 % of 4 rounds down to 0, and at least one may always go
    kept = next(e for e in (A, B) if e not in admission.ejected)
    assert kept in admission.endpoints
    assert admission.admits(kept)  # the cap overrules the breaker: the endpoint keeps receiving attempts


def test_over_the_cap_the_endpoint_that_stays_out_longest_is_ejected() -> None:
    fleet = Fleet(A, B, C, D)
    fleet.open(A)
    fleet.clock.advance(1.0)
    fleet.open(B)
    admission = fleet.admitted(OutlierEjection(max_ejection_ratio=0.25, panic_threshold=0.0))
    assert admission.ejected == (B,)
    assert admission.endpoints == (A, C, D)


def test_too_few_healthy_endpoints_means_panic_over_all_of_them() -> None:
    fleet = Fleet(A, B, C)
    fleet.open(A, B)
    admission = fleet.admitted()
    assert admission.panic
    assert admission.endpoints == (A, B, C)
    assert admission.ejected == ()
    assert all(admission.admits(e) for e in (A, B, C))


def test_single_endpoint_with_an_open_circuit_fails_fast() -> None:
    fleet = Fleet(A)
    fleet.open(A)
    admission = fleet.admitted()
    assert admission.all_open
    assert admission.endpoints == ()
    assert admission.ejected == (A,)
    assert repr(admission) == "<Admission none: all 1 circuits open>"


def test_every_circuit_open_fails_fast_instead_of_panicking() -> None:
    fleet = Fleet(A, B, C)
    fleet.open(A, B, C)
    admission = fleet.admitted()
    assert admission.all_open
    assert not admission.panic
    assert admission.review_at == min(b.reopen_at or 0.0 for b in fleet.breakers.values())


def test_ejected_endpoint_comes_back_as_a_single_probe_when_its_timeout_passes() -> None:
    fleet = Fleet(A, B)
    fleet.open(B)
    first = fleet.admitted()
    assert first.endpoints == (A,)
    assert first.review_at is not None
    fleet.clock.now = first.review_at
    again = fleet.admitted()
    assert again.endpoints == (A, B)
    assert B in again.probing
    assert again.admits(B)  # the probe
    assert fleet.breakers[B].state == "half_open"
    assert not again.admits(B)  # everyone else picks another endpoint meanwhile
    assert again.admits(A)


def test_with_no_closed_breaker_only_probes_go_out() -> None:
    fleet = Fleet(A, B)
    fleet.open(A)
    fleet.clock.advance(5.0)
    fleet.open(B)
    fleet.clock.now = fleet.breakers[A].reopen_at or 0.0
    admission = fleet.admitted()
    assert admission.endpoints == (A,)
    assert admission.ejected == (B,)
    assert not admission.panic
    assert admission.admits(A)
    assert not admission.admits(A)


def test_endpoint_without_a_breaker_yet_counts_as_healthy() -> None:
    admission = OutlierEjection().admitted([A, B], {})
    assert admission.endpoints == (A, B)


def test_admission_repr_names_what_is_missing() -> None:
    fleet = Fleet(A, B, C)
    fleet.open(C)
    assert repr(fleet.admitted()) == "<Admission 2 endpoints, ejected 127.0.0.1:5003>"
    fleet.open(B)
    assert repr(fleet.admitted()) == "<Admission 3 endpoints (panic: balancing over all)>"


@pytest.mark.parametrize("kwargs", [{"max_ejection_ratio": 1.5}, {"panic_threshold": -0.1}])
def test_a_nonsensical_ejection_policy_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        OutlierEjection(**kwargs)
