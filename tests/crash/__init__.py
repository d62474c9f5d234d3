"""Crash safety (README, "Atomic outputs"): pybuild killed at many points, full and read-only outputs, concurrent writers."""
