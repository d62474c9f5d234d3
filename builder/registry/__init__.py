"""Registries: references, credentials and auth, the HTTP transport, push and pull (distribution spec)."""
