"""Benchmarks and correctness gates (public APIs only)."""
