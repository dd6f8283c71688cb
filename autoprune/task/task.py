"""``PruningTask``: a base model with everything needed to build and score pruning strategies.

The task owns the heavy lifting -- the traced ``PruningSpace``, the channel importance scores, the
accuracy proxy and its cache, the prior and its reward baseline -- so that searchers, ``prune``,
``evaluate`` and the Gymnasium environment (a thin adapter over a task) share one implementation.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from autoprune.data import BatchLoader, DataSplits, load_splits
from autoprune.errors import AutopruneError
from autoprune.pruning import PruningSpace, check_target
from autoprune.recovery import reconstruction_batches
from autoprune.task.episode import StrategyEpisode, make_prior
from autoprune.task.proxy import AccuracyProxy, ProxyResult, create_proxy
from autoprune.task.rewards import REWARDS
from autoprune.task.settings import PruningSettings

IMPORTANCE_BATCH = 64  # training batch size of data-dependent importance criteria (taylor, gradient, ...)


def make_proxy(settings: PruningSettings, model: nn.Module, splits: DataSplits, **options: Any) -> AccuracyProxy:
    """The accuracy proxy ``settings`` name (``proxy``, ``proxy_measure``, ``proxy_images``, ``proxy_steps``,
    ``adaptive_bn``, ``calib_batches``, ``reconstruct``) for base model ``model``; ``options``: further ``AccuracyProxy``
    arguments (e.g. ``finetune_lr``)."""
    return create_proxy(settings.proxy, splits, **{
        "num_images": settings.proxy_images, "adaptive_bn": settings.adaptive_bn, "calib_batches": settings.calib_batches,
        "finetune_steps": settings.proxy_steps, "reconstruct_images": settings.reconstruct, "teacher": model,
        "measure": settings.proxy_measure, **options})


def importance_data(splits: DataSplits) -> BatchLoader:
    """The training batches data-dependent importance criteria score channels on (fixed order)."""
    return BatchLoader(splits.train, IMPORTANCE_BATCH, shuffle=True, seed=0)


class PruningTask:
    """A base model, its data and ``PruningSettings``: builds strategies and scores them on the proxy.

    :param model: the base model (never modified).
    :param splits: the data: the proxy scores on ``splits.val`` after calibrating on ``splits.train``.
    :param settings: the rules of the problem (criterion, prior, reward, proxy, ...).
    :param space: a prebuilt ``PruningSpace`` of ``model`` to share (its ``round_to`` must match).
    :param scores: precomputed importance scores (one array per group), e.g. those a policy was searched with.
    :param source: what the task was built from (architecture, classes, checkpoint path), for records.
    :param baselines: the prior's proxy accuracies already measured (``prior_baselines``) on the same
        model, data and settings.
    :param proxy: an ``AccuracyProxy`` (and its cache) to share, built with the same proxy settings.
    """

    BASELINE_STEP = 0.05  # spacing of the targets where the prior's proxy accuracy is measured

    def __init__(self, model: nn.Module, splits: DataSplits, settings: PruningSettings | None = None, *,
                 space: PruningSpace | None = None, scores: Sequence[np.ndarray] | None = None,
                 source: dict[str, Any] | None = None, baselines: dict[float, float] | None = None,
                 proxy: AccuracyProxy | None = None) -> None:
        self.settings = settings or PruningSettings()
        self.model = model.eval()
        self.splits = splits
        self.source = dict(source or {})
        example = torch.zeros(1, *splits.input_shape)
        self.space = space if space is not None else PruningSpace(model, example, round_to=self.settings.round_to)
        if self.space.round_to != self.settings.round_to:
            raise AutopruneError(f"the shared pruning space rounds to {self.space.round_to} channels but the settings "
                                 f"ask for {self.settings.round_to}")
        # Importance is a property of the base model: computed once, not per episode.
        if scores is not None and not isinstance(scores, list):
            scores = list(scores)
        self.scores = scores if scores is not None else self.space.importance(
            self.settings.criterion, importance_data(splits))
        self.proxy = proxy or make_proxy(self.settings, model, splits)
        self.prior = make_prior(self.settings.prior, self.space, self.settings.min_keep, self.scores)
        self.floor = self.space.min_flops_ratio(self.settings.min_keep)
        # the prior's proxy accuracy by grid target; a dict handed in is shared, so measurements add to it
        self._baselines: dict[float, float] = baselines if baselines is not None else {}
        self.reconstruction_batches = reconstruction_batches(splits, self.settings.reconstruct)

    PROXY_FIELDS = ("proxy", "proxy_measure", "proxy_images", "proxy_steps", "adaptive_bn", "calib_batches", "criterion", "round_to",
                    "reconstruct")

    def derive(self, **changes: Any) -> PruningTask:
        """The same base model and data under changed settings (e.g. another reward); shares the space
        (unless ``round_to`` changes), the importance scores (unless the criterion changes) and, where the
        proxy's settings are unchanged, the proxy and its cache."""
        settings = self.settings.replace(**changes)
        if settings.round_to != self.settings.round_to:
            return PruningTask(self.model, self.splits, settings, source=self.source)
        if settings.criterion != self.settings.criterion:  # the same space, channels ranked by another criterion
            return PruningTask(self.model, self.splits, settings, space=self.space, source=self.source)
        same_proxy = all(getattr(settings, f) == getattr(self.settings, f) for f in self.PROXY_FIELDS)
        same_prior = same_proxy and all(getattr(settings, f) == getattr(self.settings, f)
                                        for f in ("prior", "min_keep", "fill_budget"))
        return PruningTask(self.model, self.splits, settings, space=self.space, scores=self.scores, source=self.source,
                           proxy=self.proxy if same_proxy else None, baselines=self._baselines if same_prior else None)

    # ------------------------------------------------------------------ factories
    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, settings: PruningSettings | None = None, *,
                        splits: DataSplits | None = None, data: str | None = None, data_dir: str | None = None,
                        val_size: int | None = None, **kwargs: Any) -> PruningTask:
        """The task of an autoprune model file; the data default to the data set and validation split it records."""
        from autoprune.checkpoint import load_model

        model, payload = load_model(checkpoint)
        meta = payload.get("meta", {})
        source = {"arch": payload["arch"], "num_classes": payload["num_classes"], "checkpoint": str(checkpoint),
                  "test_accuracy": meta.get("test_accuracy")}
        return cls.from_model(model, settings, splits=splits, data=data or meta.get("dataset"), data_dir=data_dir,
                              val_size=val_size or meta.get("val_size"), source=source, **kwargs)

    @classmethod
    def from_model(cls, model: nn.Module, settings: PruningSettings | None = None, *, splits: DataSplits | None = None,
                   data: str | None = None, data_dir: str | None = None, val_size: int | None = None,
                   **kwargs: Any) -> PruningTask:
        """The task of an in-memory model; ``splits`` or a data set name (default: the embedded digits)."""
        if splits is None:
            splits = load_splits(data or "digits", data_dir, val_size)
        return cls(model, splits, settings, **kwargs)

    # ------------------------------------------------------------------ strategies
    def episode(self) -> StrategyEpisode:
        """A fresh data-free episode under this task's rules (action mapping, action wall, budget fill)."""
        s = self.settings
        return StrategyEpisode(self.space, s.min_keep, s.tolerance, s.action_mode, s.fill_budget, self.prior, s.observation)

    def check_target_range(self, low: float, high: float) -> tuple[float, float]:
        low, high = check_target(low), check_target(high)
        if low > high:
            raise AutopruneError(f"a target range must be (low, high) with low <= high, got ({low:g}, {high:g})")
        if self.floor > low:
            raise AutopruneError(f"the lowest target {low:g} cannot be met on this model: with every group at "
                                 f"min_keep={self.settings.min_keep:g} it keeps {self.floor:.3f} of the FLOPs")
        return low, high

    def prior_strategy(self, target: float) -> np.ndarray:
        """What an all-zero ``offset`` policy ends with at ``target``: the prior's allocation, budget filled."""
        strategy = np.clip(np.asarray(self.prior(target), dtype=np.float64), self.settings.min_keep, 1.0)
        return self.space.fill(strategy, target) if self.settings.fill_budget else strategy

    def apply(self, strategy: Sequence[float] | np.ndarray) -> nn.Module:
        """The base model physically pruned with ``strategy`` (channels ranked by the task's importance
        scores), its layers refitted by least squares where the settings ask for reconstruction."""
        return self.space.apply(strategy, self.settings.criterion, reconstruct=self.reconstruction_batches)

    # ------------------------------------------------------------------ scoring
    def score(self, strategy: Sequence[float] | np.ndarray) -> float:
        """Proxy accuracy of a strategy (keep ratios), cached by its kept-channel counts."""
        return self.score_counts(self.space.keep_counts(strategy)).accuracy

    def score_counts(self, counts: np.ndarray, timing: dict[str, float] | None = None) -> ProxyResult:
        """The proxy's result for kept-channel counts; ``timing["prune_s"]`` receives the pruning time
        when the model has to be built (a cache miss)."""

        def build() -> nn.Module:  # reconstructed where the proxy asks for it (recon, recon-*), else as `apply` builds
            t0 = time.perf_counter()
            refit = self.proxy.reconstruction if self.proxy.reconstruction is not None else self.reconstruction_batches
            model = self.space.apply(counts / self.space.channels, self.settings.criterion, reconstruct=refit)
            if timing is not None:
                timing["prune_s"] = time.perf_counter() - t0
            return model

        return self.proxy(tuple(int(c) for c in counts), build)

    def reward(self, accuracy: float, flops: int, target: float) -> float:
        return float(REWARDS.get(self.settings.reward)(accuracy, flops, target, self.prior_baseline))

    def prior_baseline(self, target: float) -> float:
        """Proxy accuracy of the prior's strategy at ``target``.

        Measured at targets on a grid of ``BASELINE_STEP`` (each once, cached) and interpolated
        linearly in between: that accuracy is a smooth, monotone function of the target, and a
        conditional search then spends ~15 proxy evaluations on baselines instead of one per
        distinct target.
        """
        step = self.BASELINE_STEP
        below = math.floor(target / step + 1e-9)
        lo, hi = below * step, (below + 1) * step
        if abs(target - lo) < 1e-9:
            return self._prior_at(lo)
        w = (target - lo) / step
        return (1 - w) * self._prior_at(lo) + w * self._prior_at(min(hi, 1.0))

    def prior_baselines(self, low: float, high: float) -> dict[float, float]:
        """Measure the prior's proxy accuracy at every grid target that interpolation over [low, high]
        reads, and return them all (e.g. to hand to parallel workers, which then need not repeat them)."""
        step = self.BASELINE_STEP
        for k in range(math.floor(low / step + 1e-9), math.floor(high / step + 1e-9) + 2):
            self._prior_at(min(k * step, 1.0))
        return dict(self._baselines)

    def _prior_at(self, target: float) -> float:
        key = round(target, 4)
        if key not in self._baselines:
            self._baselines[key] = self.score(self.prior_strategy(min(max(key, self.floor), 1.0)))
        return self._baselines[key]


def make_task(model: nn.Module | None = None, checkpoint: str | os.PathLike | None = None,
              splits: DataSplits | None = None, data: str | None = None, data_dir: str | None = None,
              val_size: int | None = None, settings: PruningSettings | None = None,
              space: PruningSpace | None = None, **setting_values: Any) -> PruningTask:
    """A ``PruningTask`` from keyword arguments: the base model as ``model`` or ``checkpoint``, the data,
    and ``settings`` and/or any ``PruningSettings`` field by name (see ``ChannelPruningEnv``)."""
    if (model is None) == (checkpoint is None):
        raise AutopruneError("give the base model either as `model` or as `checkpoint`, not both or neither")
    known = {f.name for f in fields(PruningSettings)}
    unknown = sorted(set(setting_values) - known)
    if unknown:
        raise AutopruneError(f"unknown argument(s) {', '.join(unknown)}; pruning settings are {', '.join(sorted(known))}")
    settings = (settings or PruningSettings()).replace(**setting_values)
    if checkpoint is not None:
        return PruningTask.from_checkpoint(checkpoint, settings, splits=splits, data=data, data_dir=data_dir,
                                           val_size=val_size, space=space)
    assert model is not None
    return PruningTask.from_model(model, settings, splits=splits, data=data, data_dir=data_dir, val_size=val_size,
                                  space=space)
