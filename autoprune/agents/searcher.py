"""What every baseline searcher is: one strategy per target from a ``PruningTask``, under the policy's
budget rule; the registry the searchers are listed in (``autoprune.agents.baselines`` holds them)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.nn as nn

from autoprune.registry import Registry
from autoprune.task import PruningTask


@dataclass
class SearchResult:
    strategy: np.ndarray  # keep ratio per group of the task's space
    proxy_accuracy: float
    episodes: int  # proxy evaluations spent
    seconds: float
    model: nn.Module | None = None  # the pruned model when the method chose the channels itself (torch-pruning)

    def pruned(self, task: PruningTask) -> nn.Module:
        """The pruned model: the method's own, else ``task``'s criterion applied to ``strategy``."""
        return copy.deepcopy(self.model) if self.model is not None else task.apply(self.strategy)


class Searcher:
    """Finds a strategy for one target. ``episodes`` is the budget of proxy evaluations.

    :param work_dir: where a ``resumable`` searcher keeps its progress, one folder per target, and
        continues from it when run again (None: nothing is kept).
    """

    name = "base"
    summary = ""  # one line for `autoprune methods`
    searches = False  # whether it searches on the proxy (so its cost is reported beside the policy's)
    resumable = False  # whether it keeps its progress in ``work_dir`` and continues from it

    def __init__(self, work_dir: str | Path | None = None) -> None:
        self.work_dir = None if work_dir is None else Path(work_dir)

    def search(self, task: PruningTask, target: float, episodes: int = 100, seed: int = 0) -> SearchResult:
        t0 = time.perf_counter()
        strategy, spent = self._search(task, target, episodes, np.random.default_rng(seed))
        return SearchResult(strategy, task.score(strategy), spent, time.perf_counter() - t0)

    def _search(self, task: PruningTask, target: float, episodes: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        raise NotImplementedError


SEARCHERS: Registry[type[Searcher]] = Registry("baseline")
