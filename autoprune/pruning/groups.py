"""The channel groups of a pruning space: what ``PruningSpace`` builds and importance criteria read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch.nn as nn


@dataclass
class PruneOp:
    """Prune ``module_name`` with ``handler``; channel ``idxs[i]`` belongs to root channel ``root_idxs[i]``."""

    module_name: str
    handler: Any
    idxs: np.ndarray
    root_idxs: np.ndarray
    is_out: bool
    is_parameter: bool = False


@dataclass
class ChannelGroup:
    """A set of coupled channels removed together; the env takes one action per group."""

    index: int
    root: str  # name of the layer whose output channels define the group
    channels: int
    layers: list[str]  # every module the group touches
    kind: str  # "conv", "depthwise" or "linear" (of the root layer)
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    feature_size: int  # input feature-map side of the root layer
    flops: int = 0  # dense MACs of the layers whose channels this group changes
    params: int = 0  # dense parameters of those layers
    ops: list[PruneOp] = field(default_factory=list, repr=False)
    tp_group: Any = field(default=None, repr=False, compare=False)  # torch-pruning's group, for its importance objects


@dataclass
class ExcludedGroup:
    root: str
    channels: int
    reason: str


class GroupedModel(Protocol):
    """What importance criteria read from a pruning space: the (unpruned) model and its channel groups."""

    model: nn.Module
    groups: list[ChannelGroup]
