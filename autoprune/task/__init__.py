"""The pruning problem of one base model: settings, data-free episodes, the accuracy proxy, rewards,
and ``PruningTask``, which the searchers, ``prune``, ``evaluate`` and the Gymnasium environment share."""

from autoprune.task.episode import (
           ACTION_MODES,
           FEATURE,
           OBSERVATION_FEATURES,
           PRIORS,
           StrategyEpisode,
           make_prior,
)
from autoprune.task.proxy import AccuracyProxy, ProxyResult
from autoprune.task.rewards import REWARDS
from autoprune.task.settings import PruningSettings
from autoprune.task.task import PruningTask, importance_data, make_task

__all__ = ["ACTION_MODES", "FEATURE", "OBSERVATION_FEATURES", "PRIORS", "REWARDS", "AccuracyProxy", "ProxyResult",
           "PruningSettings", "PruningTask", "StrategyEpisode", "importance_data", "make_prior", "make_task"]
