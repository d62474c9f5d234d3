"""Crash safety (SPEC section 6): pybuild killed at many points, full and read-only outputs, concurrent writers."""
