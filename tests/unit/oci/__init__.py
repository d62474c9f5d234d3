"""Unit tests of builder/oci/."""
