"""Layers: change sets, their canonical tar stream, compression and blobs."""
