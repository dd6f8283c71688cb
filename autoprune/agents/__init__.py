"""Conditional policy search on stable-baselines3, policy queries, and baseline searchers.

Names are imported on first use, so that the CLI can register its sub-commands without importing
stable-baselines3.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "AGENTS": "autoprune.agents.algorithms",
    "create_agent": "autoprune.agents.algorithms",
    "list_agents": "autoprune.agents.algorithms",
    "ConditionalPolicy": "autoprune.agents.policy",
    "load_policy": "autoprune.agents.policy",
    "SearchConfig": "autoprune.agents.conditional",
    "search": "autoprune.agents.conditional",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autoprune.agents' has no attribute {name!r}")


__all__ = sorted(_LAZY)
