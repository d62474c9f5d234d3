"""Unit tests of builder/layer/."""
