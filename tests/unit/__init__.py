"""Unit tests, arranged as builder/ is: tests/unit/fs/ tests builder/fs/, and so on. Tests of a
top-level module (builder/stage.py: test_stage.py), of output writers across packages, and of the
whole package (test_layering.py) sit here."""
