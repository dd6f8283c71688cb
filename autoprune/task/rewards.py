"""Episode rewards: what a finished strategy is worth to the search (a registry: ``REWARDS``).

A reward is ``fn(accuracy, flops, target, baseline)``: the proxy accuracy in [0, 1], the strategy's
MACs, the target, and ``baseline(target)`` -- the proxy accuracy of the prior's strategy at that
target, measured only by the rewards that call it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from autoprune.registry import Registry

RewardFn = Callable[[float, int, float, Callable[[float], float]], float]
REWARDS: Registry[RewardFn] = Registry("reward")


@REWARDS.register("relative")
def relative_reward(accuracy: float, flops: int, target: float, baseline: Callable[[float], float]) -> float:
    """Proxy gain over the prior's strategy at the same target: comparable across targets."""
    return accuracy - baseline(target)


@REWARDS.register("accuracy")
def accuracy_reward(accuracy: float, flops: int, target: float, baseline: Callable[[float], float]) -> float:
    """AMC's R_acc (the action wall enforces the budget)."""
    return accuracy


@REWARDS.register("error_log_flops")
def error_log_flops_reward(accuracy: float, flops: int, target: float, baseline: Callable[[float], float]) -> float:
    """AMC's R_FLOPs = -error * log(FLOPs)."""
    return -(1.0 - accuracy) * math.log(flops)
