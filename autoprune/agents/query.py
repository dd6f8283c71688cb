"""``prune_to_target``: a pruned model at a target from a trained policy or from a baseline method.

What ``autoprune prune`` does, as a library call: choose the strategy (a policy rollout, the best of
K rollouts on the proxy, or a baseline searcher such as ``uniform``, ``global`` or ``sensitivity``),
prune the base model physically, re-estimate its BatchNorm statistics, optionally fine-tune it with
the shared recovery recipe, and describe the result.

With ``iterative=K`` (K > 1) the same final strategy is reached in K prune--fine-tune steps (a gradual
schedule): step k keeps ``round(C - (C - c_final) * k / K)`` channels of each group, so counts only
shrink and step K keeps exactly the strategy's; at every step the channels are re-chosen by the task's
importance criterion on the current, fine-tuned weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch.nn as nn

from autoprune.agents.baselines import create_searcher
from autoprune.agents.policy import ConditionalPolicy
from autoprune.agents.searcher import SearchResult
from autoprune.errors import AutopruneError
from autoprune.pruning import PruningSpace, count_params
from autoprune.pruning.importance import needs_data
from autoprune.recovery import FinetuneRecipe, calibration_batches, finetune
from autoprune.task import PruningTask, importance_data
from autoprune.training import evaluate, recalibrate_bn


@dataclass
class PruneResult:
    model: nn.Module  # the pruned (and, with a recipe, fine-tuned) model
    strategy: np.ndarray  # keep ratio per group
    summary: dict[str, Any]  # what ``prune`` writes to its .json and the model file's metadata


def choose_strategy(task: PruningTask, target: float, policy: ConditionalPolicy | None = None, method: str | None = None,
                    best_of: int = 1, episodes: int = 100, seed: int = 0,
                    allow_extrapolation: bool = False) -> SearchResult:
    """The strategy for ``target`` and its proxy accuracy: from ``policy`` (the best of ``best_of``
    proxy-scored candidates) or from the baseline searcher ``method`` (with ``episodes`` proxy evaluations).
    ``result.pruned(task)`` gives the pruned model."""
    if (policy is None) == (method is None):
        raise AutopruneError("give either a policy or a method (uniform, global, sensitivity, ...), not both or neither")
    if policy is None:
        assert method is not None
        return create_searcher(method).search(task, target, episodes, seed)
    t0 = time.perf_counter()
    if best_of > 1:
        strategy, score, scored = policy.best_strategy(target, task.score, best_of, seed, allow_extrapolation)
    else:
        strategy = policy.strategy(target, allow_extrapolation)
        score, scored = task.score(strategy), 1
    return SearchResult(strategy, score, scored, time.perf_counter() - t0)


def prune_to_target(task: PruningTask, target: float, policy: ConditionalPolicy | None = None, method: str | None = None,
                    best_of: int = 1, episodes: int = 100, recipe: FinetuneRecipe | None = None, seed: int = 0,
                    allow_extrapolation: bool = False, log: Callable[[str], None] | None = None,
                    iterative: int = 1) -> PruneResult:
    """Prune ``task``'s base model for ``target`` with ``policy`` or baseline ``method``; fine-tune with
    ``recipe`` (distilling from the base model when the recipe says so).

    ``iterative=K`` > 1 reaches the same final strategy in K prune--fine-tune steps (``recipe.epochs``
    each, so ``K * recipe.epochs`` in all; see ``gradual_counts``); it needs a recipe and excludes
    reconstruction. The summary's ``steps`` hold each step's FLOPs ratio (relative to the base model)
    and test accuracy, ``total_finetune_epochs`` the epochs spent in all.
    """
    check_iterative(task, iterative, recipe)
    choice = choose_strategy(task, target, policy, method, best_of, episodes, seed, allow_extrapolation)
    strategy, proxy_accuracy = choice.strategy, choice.proxy_accuracy
    if iterative > 1:
        assert recipe is not None
        return _prune_gradually(task, target, strategy, proxy_accuracy, iterative, recipe, seed, log,
                                method="policy" if policy is not None else method,
                                best_of=best_of if policy is not None else None)
    pruned = choice.pruned(task)
    recalibrate_bn(pruned, calibration_batches(task.splits.train, seed=seed))
    test_before = evaluate(pruned, task.splits.test)
    space = task.space
    summary = _describe(task, target, strategy, pruned, proxy_accuracy, "policy" if policy is not None else method,
                        best_of if policy is not None else None, seed)
    summary.update(achieved_flops_ratio=space.flops_ratio(strategy), test_accuracy=test_before,
                   test_accuracy_before_finetune=test_before)
    if recipe is not None and recipe.epochs > 0:
        result = finetune(pruned, task.splits, recipe, teacher=task.model, seed=seed, progress=log is not None, log=log)
        summary["finetune"] = {k: v for k, v in result.summary().items() if k != "history"}
        summary["recipe"] = asdict(recipe)
        summary["test_accuracy"] = evaluate(pruned, task.splits.test)
    epochs = recipe.epochs if recipe is not None else 0
    summary.update(iterative=1, total_finetune_epochs=epochs,
                   steps=[{"step": 1, "target_flops_ratio": summary["achieved_flops_ratio"],
                           "achieved_flops_ratio": summary["achieved_flops_ratio"],
                           "channels": space.keep_counts(strategy).tolist(), "test_accuracy_before_finetune": test_before,
                           "test_accuracy": summary["test_accuracy"], "finetune_epochs": epochs}])
    return PruneResult(pruned, strategy, summary)


def check_iterative(task: PruningTask, iterative: int, recipe: FinetuneRecipe | None) -> None:
    """Refuse an ``iterative`` setting that cannot run (before any search is spent)."""
    if isinstance(iterative, bool) or not isinstance(iterative, (int, np.integer)) or iterative < 1:
        raise AutopruneError(f"--iterative must be a number of prune-fine-tune steps >= 1, got {iterative!r}")
    if iterative == 1:
        return
    if recipe is None or recipe.epochs < 1:
        raise AutopruneError(f"--iterative {iterative} fine-tunes between its steps: give --finetune-epochs >= 1 "
                             "(the epochs of each step)")
    if task.settings.reconstruct > 0:
        raise AutopruneError("--iterative > 1 cannot be combined with --reconstruct: reconstruction refits layers "
                             "towards the base model's outputs and runs only when pruning in one shot")


def gradual_counts(space: PruningSpace, final: np.ndarray, steps: int) -> np.ndarray:
    """Kept channels per group at each of ``steps`` steps from the dense model to ``final`` counts:
    row k-1 is ``round(C - (C - final) * k / steps)`` snapped to the space's allowed counts, so counts
    never grow from one step to the next and the last row is ``final`` itself."""
    final = np.asarray(final, dtype=np.int64)
    dense = space.channels.astype(np.float64)
    rows = [space.snap(np.clip(np.floor(dense - (dense - final) * k / steps + 0.5), final, space.channels).astype(np.int64))
            for k in range(1, steps + 1)]
    rows[-1] = final.copy()
    return np.stack(rows)


def step_ratios(base: PruningSpace, current: PruningSpace, previous: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Keep ratios of ``current`` (the space of the model the last step left) that keep ``counts`` (per
    group of the ``base`` space) channels; ``previous`` = the counts the model has now. The groups must
    be the base's, matched by root layer, in the same order and with the same layers; a base group
    missing from ``current`` (one channel left, so not prunable) must already be at its count."""
    index = {g.root: g for g in base.groups}
    order: list[int] = []
    for g in current.groups:
        b = index.get(g.root)
        what = None
        if b is None:
            what = "is not a group of the base model"
        elif g.channels != previous[b.index]:
            what = f"has {g.channels} channels where the last step kept {previous[b.index]}"
        elif sorted(g.layers) != sorted(b.layers):
            what = "couples other layers than in the base model"
        if what is not None:
            raise AutopruneError(f"the pruned model's channel group {g.root} {what}: its groups do not correspond to "
                                 "the base model's, so it cannot be pruned step by step (use --iterative 1)")
        assert b is not None
        order.append(b.index)
    if order != sorted(order):
        raise AutopruneError("the pruned model's channel groups come in another order than the base model's, so it "
                             "cannot be pruned step by step (use --iterative 1)")
    for g in base.groups:
        if g.index not in order and previous[g.index] != counts[g.index]:
            raise AutopruneError(f"channel group {g.root} of the base model is not prunable in the pruned model "
                                 f"({previous[g.index]} channels left, {counts[g.index]} to keep), so it cannot be "
                                 "pruned step by step (use --iterative 1)")
    wanted = counts[order]
    ratios = wanted / current.channels
    if not np.array_equal(current.keep_counts(ratios), wanted):
        raise AutopruneError(f"the pruned model cannot keep {wanted.tolist()} channels in its groups of "
                             f"{current.channels.tolist()} (rounding to {current.round_to})")
    return ratios


def _prune_gradually(task: PruningTask, target: float, strategy: np.ndarray, proxy_accuracy: float, steps: int,
                     recipe: FinetuneRecipe, seed: int, log: Callable[[str], None] | None, method: str | None,
                     best_of: int | None) -> PruneResult:
    """``steps`` prune--fine-tune steps from the base model to ``strategy`` (see ``gradual_counts``)."""
    emit = log or (lambda line: print(line, flush=True))
    base, splits, criterion = task.space, task.splits, task.settings.criterion
    final = base.keep_counts(strategy)
    schedule = gradual_counts(base, final, steps)
    calib = calibration_batches(splits.train, seed=seed)
    data = importance_data(splits) if needs_data(criterion) else None
    model, previous = task.model, base.channels.copy()
    records: list[dict[str, Any]] = []
    tuned = None
    for k, counts in enumerate(schedule, start=1):
        planned = float(base.flops_of_counts(counts[:, None])[0]) / base.dense_flops
        if k == 1:  # the base model: its space and importance scores are the task's
            model, flops = task.apply(counts / base.channels), base.flops(counts / base.channels)
        else:  # the last step's fine-tuned model, its channels ranked again on its own weights
            current = PruningSpace(model, base.example_inputs, round_to=base.round_to)
            ratios = step_ratios(base, current, previous, counts)
            model, flops = current.apply(ratios, criterion, data), current.flops(ratios)
        recalibrate_bn(model, calib)
        before = evaluate(model, splits.test)
        tuned = finetune(model, splits, recipe, teacher=task.model, seed=seed + k - 1, progress=log is not None, log=log)
        after = evaluate(model, splits.test)
        achieved = flops / base.dense_flops
        records.append({"step": k, "target_flops_ratio": planned, "achieved_flops_ratio": achieved,
                        "channels": counts.tolist(), "test_accuracy_before_finetune": before, "test_accuracy": after,
                        "finetune_epochs": recipe.epochs, "seed": seed + k - 1, "val_before": tuned.val_before,
                        "val_after": tuned.val_after, "kept_initial": tuned.kept_initial,
                        "seconds": tuned.train.seconds})
        emit(f"step {k}/{steps}: FLOPs ratio {achieved:.3f} of the base (step target {planned:.3f}); "
             f"test accuracy {before:.2f}% -> {after:.2f}% after {recipe.epochs} fine-tune epochs")
        previous = counts
    assert tuned is not None and np.array_equal(previous, final)
    summary = _describe(task, target, strategy, model, proxy_accuracy, method, best_of, seed)
    summary.update({
        "achieved_flops_ratio": records[-1]["achieved_flops_ratio"], "test_accuracy": records[-1]["test_accuracy"],
        # of the returned model before its own (the last step's) fine-tune; the steps hold the others
        "test_accuracy_before_finetune": records[-1]["test_accuracy_before_finetune"],
        "finetune": {k: v for k, v in tuned.summary().items() if k != "history"}, "recipe": asdict(recipe),
        "iterative": steps, "total_finetune_epochs": steps * recipe.epochs, "steps": records,
        "step_channels": f"re-chosen at every step by the {criterion} criterion on the fine-tuned weights",
    })
    return PruneResult(model, np.asarray(strategy, dtype=np.float64), summary)


def _describe(task: PruningTask, target: float, strategy: np.ndarray, model: nn.Module, proxy_accuracy: float,
              method: str | None, best_of: int | None, seed: int) -> dict[str, Any]:
    """What every ``prune`` summary says of the pruned model, one-shot or iterative."""
    space = task.space
    return {"target": float(target), "params": count_params(model), "dense_params": count_params(task.model),
            "proxy_accuracy": proxy_accuracy, "strategy": np.round(strategy, 4).tolist(),
            "channels": {g.root: [int(k), int(g.channels)] for g, k in zip(space.groups, space.keep_counts(strategy))},
            "method": method, "best_of": best_of, "settings": task.settings.to_dict(), "seed": seed}
