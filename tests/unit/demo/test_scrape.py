"""Metrics pages are read as PromQL's sum by would read them; a page that is not Prometheus text reads empty."""

from __future__ import annotations

from meshlet.demo import scrape

PAGE = """\
# HELP meshlet_attempts_total Outbound attempts
# TYPE meshlet_attempts_total counter
meshlet_attempts_total{service="inventory",method="/shop.inventory.v1.Inventory/Reserve",code="OK"} 90.0
meshlet_attempts_total{service="inventory",method="/shop.inventory.v1.Inventory/Reserve",code="UNAVAILABLE"} 12.0
meshlet_attempts_total{service="payments",method="/shop.payments.v1.Payments/Charge",code="OK"} 88.0
# HELP meshlet_breaker_state Breaker state
# TYPE meshlet_breaker_state gauge
meshlet_breaker_state{service="inventory",endpoint="127.0.0.1:4001"} 2.0
meshlet_breaker_state{service="inventory",endpoint="127.0.0.1:4002"} 0.0
"""


def test_sums_by_label_over_the_matching_samples() -> None:
    samples = scrape.parse(PAGE)

    assert scrape.by_label(samples, scrape.ATTEMPTS, "code", service="inventory") == {"OK": 90.0, "UNAVAILABLE": 12.0}
    assert scrape.total(samples, scrape.ATTEMPTS) == 190.0
    assert scrape.total(samples, scrape.ATTEMPTS, service="nobody") == 0.0
    assert scrape.has(samples, scrape.ATTEMPTS)
    assert not scrape.has(samples, scrape.RETRIES)


def test_breaker_states_by_endpoint() -> None:
    states = scrape.breaker_states(scrape.parse(PAGE), "inventory")

    assert states == {"127.0.0.1:4001": 2, "127.0.0.1:4002": 0}


def test_a_page_that_is_not_prometheus_text_reads_empty() -> None:
    assert scrape.parse("<html>502 Bad Gateway</html>\n{") == []
