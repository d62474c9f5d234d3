"""Attestations about a built image: what went into it and how it was made."""
