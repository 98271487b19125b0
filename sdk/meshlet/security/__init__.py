"""Identity (SPIFFE), certificate sources and rotation, and intentions."""
