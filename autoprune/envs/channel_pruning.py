"""The conditional channel-pruning environment (AMC, He et al. 2018; CACP, Liu et al. 2020)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from gymnasium import spaces

from autoprune.data import BatchLoader, DataSplits, load_splits
from autoprune.envs.episode import OBSERVATION_FEATURES, StrategyEpisode, make_prior
from autoprune.envs.proxy import AccuracyProxy, ProxyResult
from autoprune.errors import AutopruneError
from autoprune.pruning import PruningSpace, check_target

# reward(proxy accuracy in [0, 1], achieved FLOPs (MACs), target, env) -> float
RewardFn = Callable[[float, int, float, "ChannelPruningEnv"], float]


def _reward_accuracy(acc: float, flops: int, target: float, env: ChannelPruningEnv) -> float:
    return acc


def _reward_error_log_flops(acc: float, flops: int, target: float, env: ChannelPruningEnv) -> float:
    return -(1.0 - acc) * math.log(flops)


def _reward_relative(acc: float, flops: int, target: float, env: ChannelPruningEnv) -> float:
    return acc - env.prior_baseline(target)


REWARDS: dict[str, RewardFn] = {
    "accuracy": _reward_accuracy,  # AMC's R_acc (the action wall enforces the budget)
    "error_log_flops": _reward_error_log_flops,  # AMC's R_FLOPs = -error * log(FLOPs)
    "relative": _reward_relative,  # proxy gain over the uniform strategy at the same target
}



class ChannelPruningEnv(gym.Env):
    """Walk the channel groups of a CNN and choose each group's keep ratio for a target FLOPs ratio.

    ## Description
    One episode prunes the model once: one step per channel group (coupled channels removed together),
    in forward order. The target -- the fraction of the dense FLOPs the pruned model may keep -- is part
    of the observation, so a single policy learns to prune for any target (CACP). At the end the pruned
    model is scored by the accuracy proxy.

    ## Observation
    ``Box(0, 1, (14,), float32)``:

    | Num | Feature          | Meaning (normalised to [0, 1])                                             |
    |-----|------------------|----------------------------------------------------------------------------|
    | 0   | group_index      | index of the group / (number of groups - 1)                                |
    | 1   | layer_type       | root layer: 0 conv, 0.5 depthwise conv, 1 linear                           |
    | 2   | in_channels      | root layer's input channels / largest channel count in the model           |
    | 3   | out_channels     | group's channels / largest channel count                                   |
    | 4   | kernel           | root kernel area / largest kernel area                                     |
    | 5   | stride           | root stride / largest stride                                               |
    | 6   | feature_size     | root input feature-map side / largest side                                 |
    | 7   | flops_share      | dense FLOPs of the layers this group changes / dense FLOPs of the model    |
    | 8   | params_share     | parameters of those layers / parameters of all conv and linear layers      |
    | 9   | flops_removed    | FLOPs removed by the decisions so far / dense FLOPs                        |
    | 10  | flops_rest       | FLOPs share of the groups still to come                                    |
    | 11  | previous_action  | keep ratio chosen for the previous group (1 at the first step)             |
    | 12  | target           | the target FLOPs ratio                                                     |
    | 13  | budget_slack     | (budget - FLOPs if this and later groups were at the minimum) / dense FLOPs|

    ## Action
    ``Box(-1, 1, (1,), float32)``, mapped to a keep ratio in ``[min_keep, 1]`` and rounded to a
    channel count (``round(ratio * channels)``, at least 1). With ``action_mode="offset"`` (default)
    the map is piecewise linear with 0 at the *prior's* keep ratio for this group and target (-1 ->
    min_keep, 0 -> prior, 1 -> 1). The prior (``prior=``) is ``"global"`` (default: the allocation a
    global ranking of channel importance gives for the target) or ``"uniform"`` (one keep ratio for
    all groups). With ``"absolute"`` the map is linear (-1 -> min_keep, 1 -> 1), as in AMC. The *action wall* (AMC) then clamps it
    so the finished strategy is guaranteed to meet the budget: it is lowered when keeping that many
    channels would exceed the budget even with every later group at its minimum, and raised when the
    strategy could no longer reach ``target - tolerance`` even with every later group kept whole.

    Rule: achieved FLOPs ratio <= target, and >= target - tolerance (0.02) whenever one channel of the
    last group changes the FLOPs by less than the tolerance (true for ResNet/VGG/MobileNet on CIFAR;
    very small models may land further below the target, never above it). With ``fill_budget``
    (default) the finished strategy then spends what the wall left unused: every group's pruned
    fraction shrinks by one common factor (and single channel steps go to the most-pruned groups)
    while the FLOPs ratio stays <= target, so the episode ends as close to the target as the channel
    granularity allows.

    ## Reward
    0 until the last step; then one of ``REWARDS`` (``reward=``):

    - ``"relative"`` (default): proxy accuracy minus the proxy accuracy of the prior's strategy at
      the same target (measured every 0.05 of target, interpolated in between), so rewards are
      comparable across targets and measure what the policy adds to the prior;
    - ``"accuracy"``: proxy accuracy (AMC's R_acc);
    - ``"error_log_flops"``: -(1 - proxy accuracy) * log(FLOPs) (AMC's R_FLOPs).

    ## Starting state
    The target is ``options["target"]`` if given to ``reset``, else drawn uniformly from
    ``target_range`` with ``self.np_random``.

    ## Episode end
    Terminates after the last group. ``info`` then holds ``strategy`` (keep ratios), ``kept_channels``,
    ``achieved_flops_ratio``, ``proxy_accuracy``, ``target``, ``reward_name`` and ``time``
    (``prune_s``; ``proxy_forward_s``, all forward passes of the proxy in this episode, including the
    uniform baseline of the ``relative`` reward; ``episode_s``; ``cached``).

    ## Arguments
    - ``model`` (nn.Module) or ``checkpoint`` (path of an autoprune model file): the base model.
    - ``splits`` (DataSplits) or ``data`` / ``data_dir`` / ``val_size``: the data (default: the
      checkpoint's data set, or the embedded digits).
    - ``criterion``: channel importance criterion (default ``"l1"``), see ``autoprune criteria``.
    - ``target_range``: (low, high) for sampled targets, default (0.2, 0.9).
    - ``min_keep``: smallest keep ratio an action maps to (default 0.1).
    - ``reward``: a key of ``REWARDS``.
    - ``proxy_images``: validation images the proxy uses (default: all of the split).
    - ``adaptive_bn``: recalibrate BN statistics before scoring (default True).
    - ``calib_batches``: training batches for that (default 4).
    - ``tolerance``: how far below the target the strategy may end (default 0.02).
    - ``action_mode``: ``"offset"`` (default) or ``"absolute"``, see Action.
    - ``round_to``: keep channel counts that are multiples of this (default 1: any count).
    - ``fill_budget``: spend the budget the action wall leaves unused (default True), see Action.
    - ``prior``: ``"global"`` (default) or ``"uniform"``, where an ``offset`` action of 0 lands, see Action.
    - ``proxy_finetune_steps``: SGD steps (batches of 64 training images, lr 0.01) on the pruned model
      before the proxy scores it (default 0: adaptive BN only). Costs about one training step each.
    - ``space``: a prebuilt ``PruningSpace`` of the model, to share between environments.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        model: nn.Module | None = None,
        checkpoint: str | None = None,
        splits: DataSplits | None = None,
        data: str | None = None,
        data_dir: str | None = None,
        val_size: int | None = None,
        criterion: str = "l1",
        target_range: tuple[float, float] = (0.2, 0.9),
        min_keep: float = 0.1,
        reward: str = "relative",
        proxy_images: int | None = None,
        adaptive_bn: bool = True,
        calib_batches: int = 4,
        tolerance: float = 0.02,
        action_mode: str = "offset",
        round_to: int = 1,
        fill_budget: bool = True,
        proxy_finetune_steps: int = 0,
        prior: str = "global",
        space: PruningSpace | None = None,
    ) -> None:
        super().__init__()
        meta: dict[str, Any] = {}
        if (model is None) == (checkpoint is None):
            raise AutopruneError("give the base model either as `model` or as `checkpoint`, not both or neither")
        if checkpoint is not None:
            from autoprune.checkpoint import load_model

            model, payload = load_model(checkpoint)
            meta = payload.get("meta", {})
        assert model is not None
        if splits is None:
            splits = load_splits(data or meta.get("dataset", "digits"), data_dir, val_size or meta.get("val_size"))
        low, high = (float(t) for t in target_range)
        check_target(low), check_target(high)
        if low > high:
            raise AutopruneError(f"target_range must be (low, high) with low <= high, got {target_range}")
        if reward not in REWARDS:
            raise AutopruneError(f"unknown reward {reward!r}; choose one of {', '.join(REWARDS)}")
        self.model = model.eval()
        self.splits = splits
        self.criterion = criterion
        self.target_range = (low, high)
        self.reward_name = reward
        example = torch.zeros(1, *splits.input_shape)
        self.space = space if space is not None else PruningSpace(model, example, round_to=round_to)
        # Importance is a property of the base model: computed once, not per episode.
        self.space.importance(criterion, BatchLoader(splits.train, 64, shuffle=True, seed=0))
        self.proxy = AccuracyProxy(splits, proxy_images, adaptive_bn, calib_batches, finetune_steps=proxy_finetune_steps)
        self.prior_name = prior
        self.episode = StrategyEpisode(self.space, min_keep, tolerance, action_mode, fill_budget,
                                       make_prior(prior, self.space, criterion, min_keep))
        if self.episode.floor > low:
            raise AutopruneError(f"the lowest target {low:g} cannot be met on this model: with every group at "
                                 f"min_keep={min_keep:g} it keeps {self.episode.floor:.3f} of the FLOPs")
        self._baselines: dict[float, float] = {}

        self.observation_space = spaces.Box(0.0, 1.0, (len(OBSERVATION_FEATURES),), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._done = True

    # ------------------------------------------------------------------ gym API
    @property
    def min_keep(self) -> float:
        return self.episode.min_keep

    @property
    def target(self) -> float:
        return self.episode.target

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        options = options or {}
        target = options["target"] if "target" in options else float(self.np_random.uniform(*self.target_range))
        obs = self.episode.reset(target)
        self._done = False
        self._episode_start = time.perf_counter()
        self._forward_start = self.proxy.forward_seconds_total
        return obs, {"target": self.target}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._done:
            raise gym.error.ResetNeeded("the episode has ended: call reset() before step()")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (1,) or not np.isfinite(a[0]) or abs(a[0]) > 1 + 1e-6:
            raise AutopruneError(f"action must be one number in [-1, 1], got {action!r}")
        self.episode.step(a[0])
        if not self.episode.done:
            return self.episode.observation(), 0.0, False, False, {}
        return self._finish()

    def _finish(self) -> tuple[np.ndarray, float, bool, bool, dict]:
        self._done = True
        counts = self.episode.counts.copy()
        strategy = counts / self.space.channels
        timing = {"prune_s": 0.0}
        result = self._score(counts, timing)
        flops = int(self.space.flops_of_counts(counts[:, None])[0])
        reward = float(REWARDS[self.reward_name](result.accuracy, flops, self.target, self))
        info = {
            "target": self.target,
            "strategy": strategy.tolist(),
            "kept_channels": counts.tolist(),
            "achieved_flops_ratio": flops / self.space.dense_flops,
            "proxy_accuracy": result.accuracy,
            "reward_name": self.reward_name,
            "time": {"prune_s": timing["prune_s"], "proxy_forward_s": self.proxy.forward_seconds_total - self._forward_start,
                     "episode_s": time.perf_counter() - self._episode_start, "cached": result.cached},
        }
        obs = np.zeros(self.observation_space.shape, np.float32)
        obs[12] = self.target
        return obs, reward, True, False, info

    # ------------------------------------------------------------------ helpers
    def _score(self, counts: np.ndarray, timing: dict[str, float] | None = None) -> ProxyResult:
        """The proxy's result for a strategy given as kept channels, cached by those counts;
        ``timing["prune_s"]`` receives the pruning time when the model has to be built."""

        def build() -> nn.Module:
            t0 = time.perf_counter()
            model = self.space.apply(counts / self.space.channels, self.criterion)
            if timing is not None:
                timing["prune_s"] = time.perf_counter() - t0
            return model

        return self.proxy(tuple(counts.tolist()), build)

    def evaluate_strategy(self, strategy: np.ndarray) -> float:
        """Proxy accuracy of a strategy (keep ratios), through the same cache as episodes."""
        return self._score(self.space.keep_counts(strategy)).accuracy

    BASELINE_STEP = 0.05  # spacing of the targets where the prior's baseline is measured

    def prior_baseline(self, target: float) -> float:
        """Proxy accuracy of the prior's strategy (what an all-zero ``offset`` policy ends with: the
        uniform strategy, or the global ranking's) at ``target``.

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

    def _prior_at(self, target: float) -> float:
        key = round(target, 4)
        if key not in self._baselines:
            target = min(max(key, self.space.min_flops_ratio(self.min_keep)), 1.0)
            centre = self.episode.prior(target)
            if self.episode.fill_budget:  # what an all-zero offset policy ends with
                centre = self.space.fill(centre, target)
            self._baselines[key] = self.evaluate_strategy(centre)
        return self._baselines[key]
