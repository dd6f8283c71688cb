"""Torch-Pruning's own global pruning, run as a user of that library would run it.

The baseline users would otherwise pick: ``torch_pruning.pruner.MetaPruner`` with
``MagnitudeImportance(p=2)`` (L2 norm of each coupled group's weights, averaged over the group and
normalised by the mean within each group: the library's defaults) and ``global_pruning=True``
(Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023). Torch-Pruning chooses the
channels itself; autoprune only sets its pruning ratio (the share of all channels removed) so that the
FLOPs target is met, and reads back how many channels each of its own groups kept.

The pruner gets the parts of autoprune's rules it can take: the classifier and the groups autoprune
excludes (e.g. channels through a shuffle) are ignored layers, and ``round_to`` is passed through.
It does not get autoprune's per-group floor (``min_keep``): in global mode Torch-Pruning's
``max_pruning_ratio`` caps the overall ratio, not each layer's, so one threshold over all normalised
scores may thin a layer to a few channels. That is the library's behaviour, and the baseline keeps it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from autoprune.errors import AutopruneError
from autoprune.pruning.space import PruningSpace


def torch_pruning_global(model: nn.Module, example_inputs: torch.Tensor, pruning_ratio: float, *,
                         ignored_layers: Sequence[str] = (), round_to: int = 1) -> nn.Module:
    """A copy of ``model`` pruned by Torch-Pruning's global magnitude pruning at ``pruning_ratio``."""
    if not 0.0 <= pruning_ratio < 1.0:
        raise AutopruneError(f"pruning_ratio must lie in [0, 1), got {pruning_ratio}")
    model = copy.deepcopy(model).eval()
    if pruning_ratio == 0.0:
        return model
    modules = dict(model.named_modules())
    try:
        pruner = tp.pruner.MetaPruner(
            model, example_inputs, importance=tp.importance.MagnitudeImportance(p=2), global_pruning=True,
            pruning_ratio=pruning_ratio, ignored_layers=[modules[n] for n in ignored_layers], round_to=None if round_to == 1 else round_to)
        pruner.step()
    except Exception as exc:  # noqa: BLE001 -- a failure inside torch-pruning, said in one line
        raise AutopruneError(f"torch-pruning's global pruning failed on this model: {str(exc).splitlines()[0]}") from None
    return model


def kept_channels(space: PruningSpace, pruned: nn.Module) -> np.ndarray:
    """Channels each group of ``space`` keeps in ``pruned`` (a pruned copy of the space's model),
    read from the output channels of the group's root layer."""
    modules = dict(pruned.named_modules())
    counts = []
    for group in space.groups:
        layer = modules.get(group.root)
        width = getattr(layer, "out_channels", getattr(layer, "out_features", None))
        if width is None:
            raise AutopruneError(f"the pruned model has no layer {group.root!r} with output channels")
        counts.append(int(width))
    return np.asarray(counts, dtype=np.int64)


def torch_pruning_global_to_target(space: PruningSpace, target: float, steps: int = 16) -> tuple[np.ndarray, nn.Module]:
    """Torch-Pruning's global pruning of the space's model with the smallest pruning ratio whose FLOPs
    ratio is at most ``target`` (bisected with ``space.largest_within``); returns the keep ratios per
    group and the pruned model."""
    ignored = [space.output_layer, *(e.root for e in space.excluded)]

    def prune(keep: float) -> nn.Module:  # keep = 1 - pruning ratio, so FLOPs grow with it
        return torch_pruning_global(space.model, space.example_inputs, min(1.0 - keep, 0.999), ignored_layers=ignored,
                                    round_to=space.round_to)

    def strategy(keep: float) -> np.ndarray:
        return kept_channels(space, prune(keep)) / space.channels

    keep = space.largest_within(strategy, target, steps=steps)
    model = prune(keep)
    ratios = kept_channels(space, model) / space.channels
    if space.flops_ratio(ratios) > target:
        raise AutopruneError(f"torch-pruning's global pruning cannot reach target {target:g} on this model "
                             f"(the lowest it reaches is {space.flops_ratio(ratios):.4f})")
    return ratios, model
