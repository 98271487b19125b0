"""Retry policy, backoff, retry budget, circuit breakers, outlier ejection and bulkheads. Pure: no I/O."""
