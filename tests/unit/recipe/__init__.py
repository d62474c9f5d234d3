"""Unit tests of builder/recipe/."""
