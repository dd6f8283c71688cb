"""One pass over the groups of a ``PruningSpace``: observations and the action wall, without data.

``PruningTask`` adds the accuracy proxy and the reward on top; a trained policy replays episodes
with this class alone to produce strategies, so querying a policy needs no data set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from autoprune.errors import AutopruneError
from autoprune.pruning import PruningSpace, check_target
from autoprune.registry import Registry
from autoprune.task.observation import make_observation

# the ``layer`` observation's features (the default set; ``autoprune.task.observation`` has the others)
OBSERVATION_FEATURES = make_observation("layer").features
FEATURE = {name: i for i, name in enumerate(OBSERVATION_FEATURES)}  # observation index by feature name

Prior = Callable[[float], np.ndarray]  # target -> keep ratio per group
PriorFactory = Callable[[PruningSpace, float, Sequence[np.ndarray]], Prior]  # (space, min_keep, importance scores)

# Where an ``offset`` action of 0 puts each group, for a target.
PRIORS: Registry[PriorFactory] = Registry("prior")


@PRIORS.register("uniform")
def uniform_prior(space: PruningSpace, min_keep: float, scores: Sequence[np.ndarray]) -> Prior:
    """One keep ratio for all groups (the largest within the target)."""
    return lambda target: space.uniform(target, min_keep)


@PRIORS.register("global")
def global_prior(space: PruningSpace, min_keep: float, scores: Sequence[np.ndarray]) -> Prior:
    """The allocation of a global ranking of channel importance (torch-pruning's global pruning)."""
    return lambda target: space.global_ranking(target, scores, min_keep)


def make_prior(name: str, space: PruningSpace, min_keep: float, scores: Sequence[np.ndarray]) -> Prior:
    """The prior called ``name`` (see ``PRIORS``) for ``space``, ranking channels by ``scores``."""
    return PRIORS.get(name)(space, min_keep, scores)


class ActionMode:
    """Maps an action in [-1, 1] to a keep ratio in [min_keep, 1] around a centre (the prior's ratio), and back."""

    def keep_ratio(self, action: float, centre: float, min_keep: float) -> float:
        raise NotImplementedError

    def action_for(self, ratio: float, centre: float, min_keep: float) -> float:
        raise NotImplementedError


ACTION_MODES: Registry[type[ActionMode]] = Registry("action mode")


@ACTION_MODES.register("offset")
class OffsetActions(ActionMode):
    """Piecewise linear with 0 at the prior's ratio: -1 -> min_keep, 0 -> prior, 1 -> 1."""

    def keep_ratio(self, action: float, centre: float, min_keep: float) -> float:
        return centre + action * ((1 - centre) if action >= 0 else (centre - min_keep))

    def action_for(self, ratio: float, centre: float, min_keep: float) -> float:
        span = (1 - centre) if ratio >= centre else (centre - min_keep)
        return float(np.clip((ratio - centre) / span, -1, 1)) if span > 0 else 0.0


@ACTION_MODES.register("absolute")
class AbsoluteActions(ActionMode):
    """Linear, as in AMC: -1 -> min_keep, 1 -> 1 (the prior is ignored)."""

    def keep_ratio(self, action: float, centre: float, min_keep: float) -> float:
        return min_keep + (action + 1) / 2 * (1 - min_keep)

    def action_for(self, ratio: float, centre: float, min_keep: float) -> float:
        return float(np.clip(2 * (ratio - min_keep) / (1 - min_keep) - 1, -1, 1))


class StrategyEpisode:
    """Builds a strategy group by group for a target, clamping every decision by the action wall."""

    def __init__(self, space: PruningSpace, min_keep: float = 0.1, tolerance: float = 0.02,
                 action_mode: str = "offset", fill_budget: bool = True, prior: Prior | None = None,
                 observation: str = "layer") -> None:
        if not 0 < min_keep <= 1:
            raise AutopruneError(f"min_keep must be in (0, 1], got {min_keep}")
        self.action_mode = action_mode
        self._actions = ACTION_MODES.get(action_mode)()
        self.space = space
        self.min_keep = float(min_keep)
        self.tolerance = float(tolerance)
        self.fill_budget = bool(fill_budget)
        self.prior = prior or uniform_prior(space, float(min_keep), [])
        self.min_counts = space.keep_counts(np.full(space.num_groups, float(min_keep)))
        self.floor = space.min_flops_ratio(min_keep)
        self.observation_set = make_observation(observation)
        static = self.observation_set.static(space)
        flops_share = np.array([g.flops for g in space.groups], dtype=np.float64) / space.dense_flops
        rest = np.clip([flops_share[i + 1:].sum() for i in range(space.num_groups)], 0, 1)  # FLOPs share still to come
        self.features = np.column_stack([static, rest])
        self.target = 1.0
        self.centre = np.ones(space.num_groups)
        self.index = 0
        self.counts = space.channels.copy()

    @property
    def done(self) -> bool:
        return self.index >= self.space.num_groups

    @property
    def strategy(self) -> np.ndarray:
        return self.counts / self.space.channels

    @property
    def flops_ratio(self) -> float:
        return float(self.space.flops_of_counts(self.counts[:, None])[0]) / self.space.dense_flops

    def reset(self, target: float) -> np.ndarray:
        target = check_target(target)
        if target < self.floor:
            raise AutopruneError(f"target {target:g} is below the smallest FLOPs ratio reachable with "
                                 f"min_keep={self.min_keep:g} ({self.floor:.3f})")
        self.target = target
        self.centre = np.clip(np.asarray(self.prior(target), dtype=np.float64), self.min_keep, 1.0)
        self.counts = self.space.channels.copy()  # undecided groups count as whole
        self.index = 0
        return self.observation()

    def keep_ratio(self, action: float) -> float:
        """Map an action in [-1, 1] to a keep ratio in [min_keep, 1].

        ``absolute``: linearly. ``offset``: piecewise linearly with 0 at the prior's ratio for the
        current group and target (-1 -> min_keep, 0 -> prior, 1 -> 1), so an untrained policy starts
        near the prior's strategy (uniform, or a global ranking) and learns deviations from it.
        """
        return self._actions.keep_ratio(float(action), self._centre(), self.min_keep)

    def action_for(self, keep_ratio: float) -> float:
        """The action that maps to ``keep_ratio`` (inverse of ``keep_ratio``)."""
        return self._actions.action_for(float(keep_ratio), self._centre(), self.min_keep)

    def _centre(self) -> float:
        return float(self.centre[min(self.index, self.space.num_groups - 1)])

    def step(self, action: float) -> int:
        """Decide the current group from ``action``; returns the channel count kept after the wall."""
        if self.done:
            raise AutopruneError("the strategy is complete: call reset() first")
        t = self.index
        channels = self.space.channels[t]
        wanted = int(np.clip(np.floor(self.keep_ratio(action) * channels + 0.5), self.min_counts[t], channels))
        self.counts[t] = self._action_wall(t, wanted)
        self.index += 1
        if self.done and self.fill_budget:
            # the wall may leave up to ``tolerance`` of the budget unused; give it back pro rata
            self.counts = self.space.keep_counts(self.space.fill(self.strategy, self.target))
        return int(self.counts[t])

    def run(self, target: float, actions: np.ndarray) -> np.ndarray:
        """A whole episode from a vector of actions (one per group); returns the strategy."""
        self.reset(target)
        for a in np.asarray(actions, dtype=np.float64).reshape(-1)[: self.space.num_groups]:
            self.step(a)
        if not self.done:
            raise AutopruneError(f"need {self.space.num_groups} actions, got {len(np.asarray(actions).reshape(-1))}")
        return self.strategy

    def observation(self) -> np.ndarray:
        """The observation for the current group: the observation set's static features, then the dynamic ones."""
        t = min(self.index, self.space.num_groups - 1)
        s = self.features[t]
        dense = self.space.dense_flops
        decided = self.counts.copy()
        decided[t:] = self.space.channels[t:]
        removed = 1 - self.space.flops_of_counts(decided[:, None])[0] / dense
        lower = self.counts.copy()
        lower[t:] = self.min_counts[t:]
        slack = self.target - self.space.flops_of_counts(lower[:, None])[0] / dense
        previous = 1.0 if t == 0 else self.counts[t - 1] / self.space.channels[t - 1]
        obs = np.concatenate([s[:-1], [removed, s[-1], previous, self.target, slack]])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    def terminal_observation(self) -> np.ndarray:
        """What follows the last decision: zeros but the target (nothing is left to decide)."""
        obs = np.zeros(len(self.observation_set.features), np.float32)
        obs[self.observation_set.index("target")] = self.target
        return obs

    def _action_wall(self, t: int, wanted: int) -> int:
        """Clamp group ``t``'s channel count so the finished strategy can still meet the budget."""
        channels = self.space.channels
        allowed = self.space.allowed_counts(t)
        candidates = allowed[allowed >= self.min_counts[t]]
        dense = self.space.dense_flops
        low_rest = np.tile(self.counts, (len(candidates), 1)).T
        low_rest[t] = candidates
        high_rest = low_rest.copy()
        low_rest[t + 1:] = self.min_counts[t + 1:, None]
        high_rest[t + 1:] = channels[t + 1:, None]
        lowest = self.space.flops_of_counts(low_rest) / dense  # later groups at their minimum
        highest = self.space.flops_of_counts(high_rest) / dense  # later groups whole
        feasible = candidates[lowest <= self.target + 1e-12]
        hi = int(feasible.max()) if len(feasible) else int(candidates[0])
        reach = candidates[highest >= self.target - self.tolerance]
        lo = int(reach.min()) if len(reach) else hi
        clamped = int(np.clip(wanted, min(lo, hi), hi))
        # snap to an allowed count (round_to > 1); lo and hi are allowed, so the result stays within them
        return int(candidates[np.argmin(np.abs(candidates - clamped) - 1e-9 * candidates)])
