"""Filesystem views: the merged metadata tree of lower layers, owners, context patterns."""
