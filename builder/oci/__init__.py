"""OCI vocabulary: digests, media types, descriptors, configs and manifests. No I/O here."""
