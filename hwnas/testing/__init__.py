"""Helpers for hwnas's own tests and benchmarks (real servers on loopback, never mocks)."""
