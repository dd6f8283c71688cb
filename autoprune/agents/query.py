"""``prune_to_target``: a pruned model at a target from a trained policy or from a baseline method.

What ``autoprune prune`` does, as a library call: choose the strategy (a policy rollout, the best of
K rollouts on the proxy, or a baseline searcher such as ``uniform``, ``global`` or ``sensitivity``),
prune the base model physically, re-estimate its BatchNorm statistics, optionally fine-tune it with
the shared recovery recipe, and describe the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch.nn as nn

from autoprune.agents.baselines import create_searcher
from autoprune.agents.policy import ConditionalPolicy
from autoprune.errors import AutopruneError
from autoprune.pruning import count_params
from autoprune.recovery import FinetuneRecipe, calibration_batches, finetune
from autoprune.task import PruningTask
from autoprune.training import evaluate, recalibrate_bn


@dataclass
class PruneResult:
    model: nn.Module  # the pruned (and, with a recipe, fine-tuned) model
    strategy: np.ndarray  # keep ratio per group
    summary: dict[str, Any]  # what ``prune`` writes to its .json and the model file's metadata


def choose_strategy(task: PruningTask, target: float, policy: ConditionalPolicy | None = None, method: str | None = None,
                    best_of: int = 1, episodes: int = 100, seed: int = 0,
                    allow_extrapolation: bool = False) -> tuple[np.ndarray, float]:
    """The strategy for ``target`` and its proxy accuracy: from ``policy`` (the best of ``best_of``
    proxy-scored candidates) or from the baseline searcher ``method`` (with ``episodes`` proxy evaluations)."""
    if (policy is None) == (method is None):
        raise AutopruneError("give either a policy or a method (uniform, global, sensitivity, ...), not both or neither")
    if policy is not None:
        if best_of > 1:
            strategy, score, _ = policy.best_strategy(target, task.score, best_of, seed, allow_extrapolation)
            return strategy, score
        strategy = policy.strategy(target, allow_extrapolation)
        return strategy, task.score(strategy)
    assert method is not None
    result = create_searcher(method).search(task, target, episodes, seed)
    return result.strategy, result.proxy_accuracy


def prune_to_target(task: PruningTask, target: float, policy: ConditionalPolicy | None = None, method: str | None = None,
                    best_of: int = 1, episodes: int = 100, recipe: FinetuneRecipe | None = None, seed: int = 0,
                    allow_extrapolation: bool = False, log: Callable[[str], None] | None = None) -> PruneResult:
    """Prune ``task``'s base model for ``target`` with ``policy`` or baseline ``method``; fine-tune with
    ``recipe`` (distilling from the base model when the recipe says so)."""
    strategy, proxy_accuracy = choose_strategy(task, target, policy, method, best_of, episodes, seed, allow_extrapolation)
    pruned = task.apply(strategy)
    recalibrate_bn(pruned, calibration_batches(task.splits.train, seed=seed))
    test_before = evaluate(pruned, task.splits.test)
    space = task.space
    summary: dict[str, Any] = {
        "target": float(target), "achieved_flops_ratio": space.flops_ratio(strategy), "params": count_params(pruned),
        "dense_params": count_params(task.model), "proxy_accuracy": proxy_accuracy, "test_accuracy": test_before,
        "test_accuracy_before_finetune": test_before, "strategy": np.round(strategy, 4).tolist(),
        "channels": {g.root: [int(k), int(g.channels)] for g, k in zip(space.groups, space.keep_counts(strategy))},
        "method": "policy" if policy is not None else method, "best_of": best_of if policy is not None else None,
        "settings": task.settings.to_dict(), "seed": seed,
    }
    if recipe is not None and recipe.epochs > 0:
        result = finetune(pruned, task.splits, recipe, teacher=task.model, seed=seed, progress=log is not None, log=log)
        summary["finetune"] = {k: v for k, v in result.summary().items() if k != "history"}
        summary["recipe"] = asdict(recipe)
        summary["test_accuracy"] = evaluate(pruned, task.splits.test)
    return PruneResult(pruned, strategy, summary)
