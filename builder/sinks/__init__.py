"""Atomic-output helpers (``lock``: private siblings, locks, regular-file reads, clones) and the OCI runtime
bundle ``pybuild unpack`` writes (``bundle``)."""
