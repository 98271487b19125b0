"""Load balancing: immutable picker snapshots over the admitted endpoints. Pure: no I/O."""
