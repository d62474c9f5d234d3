"""Unit tests of builder/fs/."""
