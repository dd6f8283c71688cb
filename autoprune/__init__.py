"""autoprune: conditional automated channel pruning of CNNs."""

__version__ = "0.1.0"

from autoprune.errors import AutopruneError  # noqa: E402

__all__ = ["AutopruneError", "__version__"]
