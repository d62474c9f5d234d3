"""pybuild: build OCI images from YAML recipes, with no daemon and no Dockerfile."""

__version__ = "0.1.0"
