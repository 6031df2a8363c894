"""weightvae: generative models of neural-network weights, as a reproducible DVC pipeline."""

__version__ = "0.1.0"

#: Version of the on-disk formats (zoo files, shards, checkpoints). Bump on any breaking change.
FORMAT_VERSION = 1
