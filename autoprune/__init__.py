"""autoprune: conditional automated channel pruning of CNNs."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from autoprune.errors import AutopruneError  # noqa: E402

_LAZY = {
    "PruningSpace": "autoprune.pruning",
    "count_flops": "autoprune.pruning",
    "count_params": "autoprune.pruning",
    "models": "autoprune.models",
    "data": "autoprune.data",
    "envs": "autoprune.envs",
    "save_model": "autoprune.checkpoint",
    "load_model": "autoprune.checkpoint",
    "load_pruned": "autoprune.checkpoint",
    "search": "autoprune.agents.conditional",
    "SearchConfig": "autoprune.agents.conditional",
    "load_policy": "autoprune.agents.policy",
    "ConditionalPolicy": "autoprune.agents.policy",
}


def __getattr__(name: str) -> Any:  # imported on first use, so `import autoprune` stays light
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return module if module.__name__ == f"autoprune.{name}" else getattr(module, name)
    raise AttributeError(f"module 'autoprune' has no attribute {name!r}")


__all__ = ["AutopruneError", "ConditionalPolicy", "PruningSpace", "SearchConfig", "__version__", "count_flops",
           "count_params", "load_model", "load_policy", "load_pruned", "models", "save_model", "search"]
