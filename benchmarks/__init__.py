"""meshlet's benchmarks (`make bench`): each prints a table; nothing here is asserted."""
