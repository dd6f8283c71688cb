"""The pruning engine: channel groups, closed-form FLOPs, importance criteria, physical pruning."""

from autoprune.pruning.flops import count_flops, count_params
from autoprune.pruning.importance import CRITERIA, create_criterion, list_criteria
from autoprune.pruning.reconstruct import LayerReconstruction, ReconstructionReport, reconstruct
from autoprune.pruning.space import ChannelGroup, ExcludedGroup, PruningSpace, check_target

__all__ = ["CRITERIA", "ChannelGroup", "ExcludedGroup", "LayerReconstruction", "PruningSpace", "ReconstructionReport",
           "check_target", "count_flops", "count_params", "create_criterion", "list_criteria", "reconstruct"]
