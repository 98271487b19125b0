"""Test support: free ports and child processes that are always reaped."""
