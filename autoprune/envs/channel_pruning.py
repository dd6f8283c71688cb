"""The conditional channel-pruning environment (AMC, He et al. 2018; CACP, Liu et al. 2020)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from autoprune.errors import AutopruneError
from autoprune.task import PruningTask, StrategyEpisode, make_task

# observation sets whose features mean the same on every model: the only ones one policy may learn on several
SHARED_OBSERVATIONS = ("transferable",)


def check_shared_rules(tasks: Sequence[PruningTask]) -> None:
    """Refuse tasks that one policy cannot learn on together: other settings, or (with several models)
    an observation set whose features are normalised within each model."""
    if not tasks:
        raise AutopruneError("give at least one task")
    settings = tasks[0].settings
    if any(t.settings != settings for t in tasks[1:]):
        raise AutopruneError("the tasks of one environment must share their pruning settings")
    check_shared_observation(settings.observation, len(tasks))


def check_shared_observation(observation: str, models: int) -> None:
    """Refuse an observation set that one policy cannot learn on ``models`` (> 1) base models."""
    if models > 1 and observation not in SHARED_OBSERVATIONS:
        raise AutopruneError(f"the {observation!r} observation is normalised within each model, so it means "
                             f"something else on each of several base models: use --observation "
                             f"{' or '.join(SHARED_OBSERVATIONS)} to search one policy on several models")


class ChannelPruningEnv(gym.Env):
    """Walk the channel groups of a CNN and choose each group's keep ratio for a target FLOPs ratio.

    ## Description
    One episode prunes the model once: one step per channel group (coupled channels removed together),
    in forward order. The target -- the fraction of the dense FLOPs the pruned model may keep -- is part
    of the observation, so a single policy learns to prune for any target (CACP). At the end the pruned
    model is scored by the accuracy proxy.

    ## Observation
    With ``observation="layer"`` (the default setting), ``Box(0, 1, (14,), float32)``; with
    ``"transferable"`` 18 features whose meaning does not depend on the model's size (see
    ``autoprune.task.observation``), ending in the same five dynamic features (``flops_removed`` ...
    ``budget_slack``). The ``layer`` set:

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
    ``achieved_flops_ratio``, ``proxy_accuracy``, ``target``, ``model``, ``reward_name`` and ``time``
    (``prune_s``; ``proxy_forward_s``, all forward passes of the proxy in this episode, including the
    uniform baseline of the ``relative`` reward; ``episode_s``; ``cached``).

    ## Several base models
    ``task`` may be a sequence of tasks (one per base model, the same settings, an observation set of
    ``SHARED_OBSERVATIONS``): every ``reset`` then picks one -- ``options["model"]`` (its index) if
    given, else uniformly with ``self.np_random``, before the target is drawn -- and the episode walks
    that model's groups (episode lengths differ between models), with that task's prior, scores, proxy
    and reward baseline. ``info["model"]`` (at reset and at the end) is the episode's model index; with
    one task it is always 0 and no random number is spent on it.

    ## Arguments
    - ``task`` (``PruningTask``, or a sequence of them, see above): the base model, data and settings
      to prune under. Or, to build one:
    - ``model`` (nn.Module) or ``checkpoint`` (path of an autoprune model file): the base model;
    - ``splits`` (DataSplits) or ``data`` / ``data_dir`` / ``val_size``: the data (default: the
      checkpoint's data set, or the embedded digits);
    - ``settings`` (``PruningSettings``), or any of its fields as keyword arguments (``criterion``,
      ``min_keep``, ``reward``, ``prior``, ``action_mode``, ``round_to``, ``fill_budget``,
      ``proxy``, ``proxy_measure``, ``proxy_images``, ``proxy_steps``, ``adaptive_bn``, ``calib_batches``,
      ``tolerance``);
    - ``space``: a prebuilt ``PruningSpace`` of the model, to share between tasks.
    - ``target_range``: (low, high) for sampled targets, default (0.2, 0.9).
    """

    metadata = {"render_modes": []}

    def __init__(self, task: PruningTask | Sequence[PruningTask] | None = None,
                 target_range: tuple[float, float] = (0.2, 0.9), **task_args: Any) -> None:
        super().__init__()
        if task is None:
            self.tasks = [make_task(**task_args)]
        else:
            self.tasks = [task] if isinstance(task, PruningTask) else list(task)
        if task is not None and task_args:
            raise AutopruneError(f"give either a task or what builds one, not both (got {', '.join(task_args)})")
        check_shared_rules(self.tasks)
        self.target_range = [t.check_target_range(*target_range) for t in self.tasks][0]  # every model meets it
        self.episodes = [t.episode() for t in self.tasks]
        self.model_index = 0  # the task of the current episode
        self.observation_space = spaces.Box(0.0, 1.0, (len(self.episode.observation_set.features),), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._done = True

    @property
    def task(self) -> PruningTask:
        """The task (base model) of the current episode."""
        return self.tasks[self.model_index]

    @property
    def episode(self) -> StrategyEpisode:
        """The current episode (a ``StrategyEpisode`` over the current task's groups)."""
        return self.episodes[self.model_index]

    @property
    def target(self) -> float:
        return self.episode.target

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        options = options or {}
        if "model" in options:
            if not 0 <= int(options["model"]) < len(self.tasks):
                raise AutopruneError(f"model must be an index below {len(self.tasks)}, got {options['model']!r}")
            self.model_index = int(options["model"])
        elif len(self.tasks) > 1:
            self.model_index = int(self.np_random.integers(len(self.tasks)))
        target = options["target"] if "target" in options else float(self.np_random.uniform(*self.target_range))
        obs = self.episode.reset(target)
        self._done = False
        self._episode_start = time.perf_counter()
        self._forward_start = self.task.proxy.forward_seconds_total
        return obs, {"target": self.target, "model": self.model_index}

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
        task, counts = self.task, self.episode.counts.copy()
        timing = {"prune_s": 0.0}
        result = task.score_counts(counts, timing)
        flops = int(task.space.flops_of_counts(counts[:, None])[0])
        reward = task.reward(result.accuracy, flops, self.target)
        info = {
            "target": self.target,
            "model": self.model_index,
            "strategy": (counts / task.space.channels).tolist(),
            "kept_channels": counts.tolist(),
            "achieved_flops_ratio": flops / task.space.dense_flops,
            "proxy_accuracy": result.accuracy,
            "reward_name": task.settings.reward,
            "time": {"prune_s": timing["prune_s"], "proxy_forward_s": task.proxy.forward_seconds_total - self._forward_start,
                     "episode_s": time.perf_counter() - self._episode_start, "cached": result.cached},
        }
        return self.episode.terminal_observation(), reward, True, False, info

