"""OCI vocabulary: digests, media types, descriptors, configs, manifests and image references. No I/O here."""
