"""Property-based tests of the pure parsers that read outside input. Each example is cheap, so the counts stay
modest and deadlines are off (a shared 2-core machine makes a per-example deadline flaky)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "meshlet", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)
settings.load_profile("meshlet")
