"""End-to-end tests: the real CLI, checked with real tools (skopeo, umoci, runc, containerd, podman)."""
