"""Tracing, metrics and logs: observers of the pipelines, never inputs to their decisions."""
