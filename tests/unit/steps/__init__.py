"""Unit tests of builder/steps/."""
