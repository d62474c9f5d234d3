"""Property tests: hypothesis properties with fixed budgets (see test_properties.py)."""
