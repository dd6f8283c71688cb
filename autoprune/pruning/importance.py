"""Channel importance criteria (a registry): which channels of a group to remove first.

Each criterion scores every channel of every group once per base model (higher = more important).
The data-dependent ones (``needs_data(name)``) score from a few training batches; the others from the
weights alone.

========== ========================================================================================
name       method
========== ========================================================================================
l1, l2     weight magnitude over all coupled layers of the group (Li et al., "Pruning Filters for
           Efficient ConvNets", 2017), via torch-pruning's ``GroupMagnitudeImportance``
bn_scale   |gamma| of the BatchNorm layers (Liu et al., "Network Slimming", 2017)
fpgm       distance to the geometric median of the filters (He et al., FPGM, CVPR 2019)
gradient   |w * dL/dw| summed per channel -- first-order weight saliency (torch-pruning's
           ``GroupTaylorImportance``); data-dependent
taylor     |mean(a * dL/da)| of the feature maps -- first-order Taylor expansion of the loss on
           activations (Molchanov et al., 2017/2019); data-dependent
entropy    entropy of each channel's pooled activations over a few batches (feature-map entropy,
           as in entropy-based filter pruning); data-dependent
random     uniformly random scores (a control)
========== ========================================================================================
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from autoprune.errors import AutopruneError
from autoprune.pruning.groups import ChannelGroup, GroupedModel
from autoprune.registry import Registry

DEFAULT_BATCHES = 4


class Criterion:
    """Base class: ``scores(space, data)`` returns one score array per group (length = its channels).

    ``needs_data``: the criterion scores from ``data`` (a few (images, labels) batches), which
    ``PruningSpace.importance`` then requires; the others ignore ``data``.
    """

    needs_data = False

    def __init__(self, num_batches: int = DEFAULT_BATCHES, seed: int = 0) -> None:
        self.num_batches = num_batches
        self.seed = seed

    def scores(self, space: GroupedModel, data: Iterable | None) -> list[np.ndarray]:
        raise NotImplementedError

    def _batches(self, data: Iterable | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``num_batches`` batches of ``data`` (``PruningSpace.importance`` makes sure there is data)."""
        batches = []
        for batch in () if data is None else data:
            batches.append(batch)
            if len(batches) >= self.num_batches:
                break
        if not batches:
            raise AutopruneError("the data given to the importance criterion is empty")
        return batches

    name = "base"


CRITERIA: Registry[type[Criterion]] = Registry("importance criterion")


def create_criterion(name: str, **kwargs: Any) -> Criterion:
    return CRITERIA.get(name)(**kwargs)


def list_criteria() -> list[str]:
    return CRITERIA.names()


def needs_data(name: str) -> bool:
    """Whether criterion ``name`` scores from training batches (so callers know to load some first)."""
    return bool(CRITERIA.get(name).needs_data)


class TorchPruningCriterion(Criterion):
    """Scores from a torch-pruning importance object applied to each group."""

    def make(self) -> tp.importance.Importance:
        raise NotImplementedError

    def scores(self, space: GroupedModel, data: Iterable | None) -> list[np.ndarray]:
        importance = self.make()
        fallback = tp.importance.GroupMagnitudeImportance(p=1)
        out = []
        for group in space.groups:
            with torch.no_grad():
                s = importance(group.tp_group)
                if s is None:  # e.g. bn_scale on a group without BatchNorm: fall back to magnitude
                    s = fallback(group.tp_group)
            out.append(_to_numpy(s, group.channels))
        return out


def _to_numpy(scores: torch.Tensor | None, channels: int) -> np.ndarray:
    if scores is None:
        return np.zeros(channels)
    s = scores.detach().float().cpu().numpy().astype(np.float64)
    if s.shape != (channels,):
        raise AutopruneError(f"importance returned {s.shape} scores for a group of {channels} channels")
    return np.nan_to_num(s)


@CRITERIA.register("l1")
class L1(TorchPruningCriterion):
    def make(self) -> tp.importance.Importance:
        return tp.importance.GroupMagnitudeImportance(p=1)


@CRITERIA.register("l2")
class L2(TorchPruningCriterion):
    def make(self) -> tp.importance.Importance:
        return tp.importance.GroupMagnitudeImportance(p=2)


@CRITERIA.register("bn_scale")
class BNScale(TorchPruningCriterion):
    def make(self) -> tp.importance.Importance:
        return tp.importance.BNScaleImportance()


@CRITERIA.register("fpgm")
class FPGM(TorchPruningCriterion):
    def make(self) -> tp.importance.Importance:
        return tp.importance.FPGMImportance()


@CRITERIA.register("random")
class Random(Criterion):
    def scores(self, space: GroupedModel, data: Iterable | None) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        return [rng.random(g.channels) for g in space.groups]


def _backward_on(model: nn.Module, batches: list) -> None:
    """Accumulate parameter gradients of the cross-entropy loss over ``batches`` (eval-mode BN)."""
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for x, y in batches:
            F.cross_entropy(model(x), y).backward()


@CRITERIA.register("gradient")
class Gradient(TorchPruningCriterion):
    needs_data = True

    def make(self) -> tp.importance.Importance:
        return tp.importance.GroupTaylorImportance()

    def scores(self, space: GroupedModel, data: Iterable | None) -> list[np.ndarray]:
        _backward_on(space.model, self._batches(data))
        try:
            return super().scores(space, data)
        finally:
            space.model.zero_grad(set_to_none=True)


class FeatureMapCriterion(Criterion):
    """Scores each group from the output feature maps of the layers that produce its channels."""

    needs_data = True
    needs_backward = False

    def layer_scores(self, outputs: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, space: GroupedModel, data: Iterable | None) -> list[np.ndarray]:
        batches = self._batches(data)
        modules = dict(space.model.named_modules())
        producers = {op.module_name for g in space.groups for op in g.ops
                     if op.is_out and not op.is_parameter and isinstance(modules[op.module_name], (nn.Conv2d, nn.Linear))}
        outputs: dict[str, list[torch.Tensor]] = {n: [] for n in producers}
        grads: dict[str, list[torch.Tensor]] = {n: [] for n in producers}

        def make_hook(name: str):  # type: ignore[no-untyped-def]
            def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
                outputs[name].append(output.detach())
                if self.needs_backward and output.requires_grad:
                    output.register_hook(lambda g: grads[name].append(g.detach()))
            return hook

        handles = [modules[n].register_forward_hook(make_hook(n)) for n in producers]
        try:
            space.model.eval()
            with torch.set_grad_enabled(self.needs_backward):
                for x, y in batches:
                    out = space.model(x)
                    if self.needs_backward:
                        F.cross_entropy(out, y).backward()
        finally:
            for h in handles:
                h.remove()
            space.model.zero_grad(set_to_none=True)
        per_layer = {n: self.layer_scores(outputs[n], grads[n]).double().numpy() for n in producers if outputs[n]}
        return [self._group_scores(g, per_layer) for g in space.groups]

    @staticmethod
    def _group_scores(group: ChannelGroup, per_layer: dict[str, np.ndarray]) -> np.ndarray:
        total, count = np.zeros(group.channels), 0
        for op in group.ops:
            if op.is_out and op.module_name in per_layer:
                s = per_layer[op.module_name]
                s = s / (s.mean() + 1e-12)  # layers on different scales contribute equally
                np.add.at(total, op.root_idxs, s[op.idxs])
                count += 1
        return total / max(count, 1)


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) or (N, C) -> (N, C), averaging spatial positions."""
    return t.flatten(2).mean(2) if t.ndim > 2 else t


@CRITERIA.register("taylor")
class Taylor(FeatureMapCriterion):
    needs_backward = True

    def layer_scores(self, outputs: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
        # hooks on a tensor fire in reverse layer order but in batch order per layer
        contributions = [_per_channel(a * g).abs().mean(0) for a, g in zip(outputs, grads)]
        return torch.stack(contributions).mean(0)


@CRITERIA.register("entropy")
class Entropy(FeatureMapCriterion):
    bins = 16

    def layer_scores(self, outputs: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
        pooled = torch.cat([_per_channel(a) for a in outputs]).double()  # (N, C)
        lo, hi = pooled.min(0).values, pooled.max(0).values
        scaled = ((pooled - lo) / (hi - lo + 1e-12) * (self.bins - 1)).round().long()  # (N, C) bin ids
        counts = F.one_hot(scaled, self.bins).sum(0).double()  # (C, bins)
        p = counts / counts.sum(1, keepdim=True)
        return -(p * torch.log(p.clamp_min(1e-12))).sum(1)
