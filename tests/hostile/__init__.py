"""Hostile archives: a generated corpus (``corpus.py``) run through every path that reads archives."""
