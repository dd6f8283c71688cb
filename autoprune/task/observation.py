"""What the agent sees of a channel group: observation sets (a registry: ``OBSERVATIONS``).

An observation is the group's *static* description (computed once per pruning space) followed by
the same five *dynamic* features in every set: FLOPs removed so far, FLOPs share still to come, the
previous keep ratio, the target, and the budget slack.

- ``layer`` (AMC/CACP's embedding): layer shape normalised by the largest value *in this model*. A
  policy's input therefore means something else on a deeper or wider network.
- ``transferable``: features whose meaning does not depend on the model's size -- relative depth,
  downsampling stage, feature-map side relative to the input, the kind of group (plain conv, residual
  stream, depthwise, concat, linear), log channel counts on a fixed scale, kernel and stride on fixed
  scales, shares of FLOPs and parameters -- so a policy can be queried on an architecture it never saw.
"""

from __future__ import annotations

import math

import numpy as np

from autoprune.pruning import ChannelGroup, PruningSpace
from autoprune.registry import Registry

DYNAMIC_FEATURES = ("flops_removed", "flops_rest", "previous_action", "target", "budget_slack")
LAYER_KIND = {"conv": 0.0, "depthwise": 0.5, "linear": 1.0}


class Observation:
    """A set of static group features; ``features`` names every entry of the observation vector."""

    static_features: tuple[str, ...] = ()

    @property
    def features(self) -> tuple[str, ...]:
        return self.static_features + DYNAMIC_FEATURES

    def index(self, feature: str) -> int:
        return self.features.index(feature)

    def static(self, space: PruningSpace) -> np.ndarray:
        """(groups, len(static_features)) values in [0, 1]."""
        raise NotImplementedError


OBSERVATIONS: Registry[type[Observation]] = Registry("observation")


@OBSERVATIONS.register("layer")
class LayerObservation(Observation):
    static_features = ("group_index", "layer_type", "in_channels", "out_channels", "kernel", "stride", "feature_size",
                       "flops_share", "params_share")

    def static(self, space: PruningSpace) -> np.ndarray:
        groups = space.groups
        total_params = sum(r.params for r in space.layers) or 1
        max_ch = max(max(g.channels, g.in_channels) for g in groups)
        max_k = max(g.kernel for g in groups)
        max_s = max(g.stride for g in groups)
        max_f = max(g.feature_size for g in groups)
        n = len(groups)
        rows = [[g.index / max(n - 1, 1), LAYER_KIND[g.kind], g.in_channels / max_ch, g.channels / max_ch,
                 g.kernel / max_k, g.stride / max_s, g.feature_size / max_f,
                 g.flops / space.dense_flops, g.params / total_params] for g in groups]
        return np.clip(np.array(rows, dtype=np.float64), 0, 1)


GROUP_KINDS = ("residual", "depthwise", "concat", "linear")  # one-hot; a plain conv group is all zeros
MAX_LOG2_CHANNELS = 12.0  # 4096 channels -> 1
MAX_KERNEL_SIDE = 7.0
MAX_STRIDE = 4.0
MAX_STAGES = 6.0  # downsamplings by 2 from the input side


@OBSERVATIONS.register("transferable")
class TransferableObservation(Observation):
    static_features = ("depth", *(f"kind_{k}" for k in GROUP_KINDS), "log_in_channels", "log_channels", "kernel_side",
                       "stride", "feature_side", "stage", "flops_share", "params_share")

    def static(self, space: PruningSpace) -> np.ndarray:
        n = space.num_groups
        input_side = max(int(space.example_inputs.shape[-1]), 1)
        total_params = sum(r.params for r in space.layers) or 1
        rows = []
        for g in space.groups:
            kinds = group_kinds(space, g)
            side = max(g.feature_size, 1)
            rows.append([g.index / max(n - 1, 1), *(float(k in kinds) for k in GROUP_KINDS),
                         math.log2(max(g.in_channels, 1)) / MAX_LOG2_CHANNELS, math.log2(g.channels) / MAX_LOG2_CHANNELS,
                         math.sqrt(g.kernel) / MAX_KERNEL_SIDE, g.stride / MAX_STRIDE, side / input_side,
                         math.log2(max(input_side / side, 1.0)) / MAX_STAGES,
                         g.flops / space.dense_flops, g.params / total_params])
        return np.clip(np.array(rows, dtype=np.float64), 0, 1)


def group_kinds(space: PruningSpace, group: ChannelGroup) -> set[str]:
    """What kind of channel group this is: a residual stream (the outputs of several layers are added,
    so they are pruned together), depthwise, concat (a consumer sees these channels among others) or
    linear; an empty set for a plain convolution's outputs."""
    records = {r.name: r for r in space.layers}
    kinds = set()
    if group.kind in ("depthwise", "linear"):
        kinds.add(group.kind)
    producers = {op.module_name for op in group.ops if op.is_out and op.module_name in records
                 and not records[op.module_name].depthwise}
    if len(producers) > 1:
        kinds.add("residual")
    for op in group.ops:
        record = records.get(op.module_name)
        if record is not None and not op.is_out and not record.depthwise and len(op.idxs) < record.in_channels:
            kinds.add("concat")
    return kinds


def make_observation(name: str) -> Observation:
    return OBSERVATIONS.get(name)()
