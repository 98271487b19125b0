"""Reading the mesh's Prometheus pages: parse the text once, then ask for sums by label, as a PromQL
``sum by (code) (...)`` would. Pure: the sampler fetches the text, this module only reads it.

A page that cannot be parsed reads as empty: the demo reports "not measured" rather than stop.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# The metric names meshlet exports (see the metrics contract); one place, so a rename is one edit.
REQUESTS = "meshlet_requests_total"
ATTEMPTS = "meshlet_attempts_total"
RETRIES = "meshlet_retries_total"
BUDGET_REFUSALS = "meshlet_retry_budget_refusals_total"
BREAKER_STATE = "meshlet_breaker_state"
BREAKER_TRANSITIONS = "meshlet_breaker_transitions_total"  # per endpoint: an endpoint's series go when it leaves
BREAKER_OPENINGS = "meshlet_breaker_openings_total"  # per upstream: every opening, whatever endpoints left since
ENDPOINTS = "meshlet_endpoints"


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    """Every sample on a ``/metrics`` page; [] for a page that is not Prometheus text."""
    try:
        return [
            Sample(sample.name, dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]
    except (ValueError, TypeError, IndexError):
        return []


def has(samples: Iterable[Sample], name: str) -> bool:
    return any(sample.name == name for sample in samples)


def _matches(sample: Sample, name: str, where: Mapping[str, str]) -> bool:
    return sample.name == name and all(sample.labels.get(key) == value for key, value in where.items())


def total(samples: Iterable[Sample], name: str, **where: str) -> float:
    """The sum of `name` over the samples whose labels include `where`."""
    return sum(sample.value for sample in samples if _matches(sample, name, where))


def by_label(samples: Iterable[Sample], name: str, label: str, **where: str) -> dict[str, float]:
    """The sum of `name` for each value of `label`, over the samples whose labels include `where`."""
    sums: dict[str, float] = defaultdict(float)
    for sample in samples:
        if _matches(sample, name, where) and label in sample.labels:
            sums[sample.labels[label]] += sample.value
    return dict(sums)


def breaker_transitions(samples: Iterable[Sample], service: str) -> dict[tuple[str, str], float]:
    """(endpoint, state entered) -> how many times so far, for the upstream `service`."""
    counts: dict[tuple[str, str], float] = defaultdict(float)
    for sample in samples:
        if _matches(sample, BREAKER_TRANSITIONS, {"service": service}):
            counts[sample.labels.get("endpoint", ""), sample.labels.get("state", "")] += sample.value
    return dict(counts)


def breaker_states(samples: Iterable[Sample], service: str) -> dict[str, int]:
    """endpoint -> breaker state (0 closed, 1 half-open, 2 open) for the upstream `service`."""
    states = by_label(samples, BREAKER_STATE, "endpoint", service=service)
    return {endpoint: int(value) for endpoint, value in states.items()}
