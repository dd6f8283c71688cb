"""Baseline searchers: one strategy per target, under the same budget rule as the policy.

Every searcher works on a ``PruningTask``: its pruning space (FLOPs, importance scores), its data-free
``StrategyEpisode`` (whose action wall enforces the budget) and its proxy.

========== ==============================================================================================
name       method
========== ==============================================================================================
uniform    one keep ratio for every group (the largest meeting the target); where the environment fills
           the budget, what rounding to whole channels leaves is spent the same way as for the policy
global     global channel ranking: remove the globally least important channels (scores normalised
           per group, as in torch-pruning's global pruning) until the target is met
random     best of N random strategies (random actions through the action wall), scored by the proxy
ga         genetic algorithm over action vectors: elitism, tournament selection, uniform crossover,
           Gaussian mutation (after the GA channel-pruning literature)
sensitivity per-group sensitivity (proxy drop when only that group is halved), keep ratios allocated
           so that sensitive groups keep more, scaled to meet the target
amc        AMC (He et al. 2018): a DDPG search in the same environment with the target fixed, one
           search per target; the best strategy it explored
slimming   Network Slimming (Liu et al. 2017): one global threshold on the raw BatchNorm scales |gamma|
           of all groups, met by bisection; within each group the smallest |gamma| go
elasticity filter elasticity (2024): per-group dynamic floors (``autoprune.sparsity``'s per-layer
           thresholds protect channels), then a global Taylor ranking above the floors
gradient-threshold
           adaptive thresholds (2022): each group's preferred keep ratio at the knee of its curve
           "fraction of channels kept vs threshold" on gradient importance, one global scale on them
tp-global  Torch-Pruning's own global pruning (MagnitudeImportance, global_pruning=True), its pruning
           ratio bisected to the target; torch-pruning chooses the channels and prunes the model itself
========== ==============================================================================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from autoprune.agents import thresholds  # noqa: F401 -- registers slimming, elasticity, gradient-threshold, tp-global
from autoprune.agents.searcher import SEARCHERS, Searcher, SearchResult
from autoprune.task import PruningTask
from autoprune.utils import read_json

__all__ = ["SEARCHERS", "SearchResult", "Searcher", "create_searcher", "list_searchers"]


def create_searcher(name: str, work_dir: str | Path | None = None) -> Searcher:
    """The searcher registered as ``name``; ``work_dir``: where a resumable one keeps its progress."""
    return SEARCHERS.get(name)(work_dir=work_dir)


def list_searchers() -> list[str]:
    return SEARCHERS.names()


@SEARCHERS.register("uniform")
class Uniform(Searcher):
    """One keep ratio for every group: the largest that meets the target (leftover budget filled)."""

    summary = "one keep ratio for every group, the largest meeting the target"

    def _search(self, task, target, episodes, rng):  # type: ignore[no-untyped-def]
        strategy = task.space.uniform(target, task.settings.min_keep)
        # with coarse rounding (round_to=8 on 16-channel groups) one shared ratio can land far under the
        # target; the policy's episodes get the leftover budget filled, so the baseline gets it too
        return (task.space.fill(strategy, target) if task.settings.fill_budget else strategy), 0


@SEARCHERS.register("global")
class GlobalRanking(Searcher):
    """Global channel ranking: the least important channels anywhere (scores normalised per group) go first."""

    summary = "global ranking of channel importance (scores normalised per group)"

    def _search(self, task, target, episodes, rng):  # type: ignore[no-untyped-def]
        return task.space.global_ranking(target, task.scores, task.settings.min_keep), 0


class ActionSearcher(Searcher):
    """Searches over action vectors; the action wall turns each into a strategy meeting the budget."""

    searches = True

    def _score(self, task: PruningTask, target: float, actions: np.ndarray) -> tuple[float, np.ndarray]:
        strategy = task.episode().run(target, actions)
        return task.score(strategy), strategy


@SEARCHERS.register("random")
class RandomSearch(ActionSearcher):
    """The best on the proxy of N random strategies (random actions through the action wall)."""

    summary = "best of N random strategies on the proxy"

    def _search(self, task, target, episodes, rng):  # type: ignore[no-untyped-def]
        best = (-1.0, task.space.uniform(target, task.settings.min_keep))
        for _ in range(max(episodes, 1)):
            best = max(best, self._score(task, target, rng.uniform(-1, 1, task.space.num_groups)), key=lambda r: r[0])
        return best[1], max(episodes, 1)


@SEARCHERS.register("ga")
class GeneticAlgorithm(ActionSearcher):
    """A genetic algorithm over action vectors (elitism, tournaments, uniform crossover, Gaussian mutation)."""

    summary = "genetic algorithm over action vectors, scored on the proxy"

    population = 16
    elite = 2
    mutation_sigma = 0.2

    def _search(self, task, target, episodes, rng):  # type: ignore[no-untyped-def]
        n = task.space.num_groups
        pop = rng.uniform(-1, 1, (self.population, n))
        episode = task.episode()
        episode.reset(target)
        # seed with the strategy an all-zero policy gets (the prior) in offset mode, else with uniform
        uniform = task.space.uniform(target, task.settings.min_keep)[0]
        pop[0] = 0.0 if episode.action_mode == "offset" else episode.action_for(uniform)
        fitness = np.array([self._score(task, target, g)[0] for g in pop])
        spent = self.population
        while spent + self.population - self.elite <= episodes:
            order = np.argsort(-fitness)
            children = [pop[i] for i in order[: self.elite]]
            while len(children) < self.population:
                a, b = (pop[max(rng.choice(self.population, 2), key=lambda i: fitness[i])] for _ in range(2))
                child = np.where(rng.random(n) < 0.5, a, b) + rng.normal(0, self.mutation_sigma, n)
                children.append(np.clip(child, -1, 1))
            new_fitness = [fitness[i] for i in order[: self.elite]]
            new_fitness += [self._score(task, target, g)[0] for g in children[self.elite:]]
            pop, fitness = np.array(children), np.array(new_fitness)
            spent += self.population - self.elite
        return episode.run(target, pop[int(np.argmax(fitness))]), spent


@SEARCHERS.register("sensitivity")
class Sensitivity(Searcher):
    """Per-group sensitivity (proxy drop when only that group is halved): sensitive groups keep more."""

    searches = True
    summary = "per-group sensitivity on the proxy; sensitive groups keep more"

    probe_keep = 0.5

    def _search(self, task, target, episodes, rng):  # type: ignore[no-untyped-def]
        space, min_keep = task.space, task.settings.min_keep
        base = task.score(np.ones(space.num_groups))
        drops = np.empty(space.num_groups)
        for g in range(space.num_groups):
            probe = np.ones(space.num_groups)
            probe[g] = self.probe_keep
            drops[g] = max(base - task.score(probe), 0.0)
        tolerance = drops / (drops.max() + 1e-12)  # 0 = robust group, 1 = most sensitive
        strongest = 1.0 / 0.2  # pruning strength that takes the most robust groups to min_keep and beyond

        def allocate(keep: float) -> np.ndarray:  # keep = 1 - strength / strongest: 1 is dense, 0 the strongest
            return np.clip(1 - (1 - keep) * strongest * (1 - 0.8 * tolerance), min_keep, 1)

        if space.flops_ratio(allocate(0.0)) > target:
            return space.uniform(target, min_keep), space.num_groups + 1
        return allocate(space.largest_within(allocate, target)), space.num_groups + 1


@SEARCHERS.register("amc")
class AMC(Searcher):
    """AMC (He et al. 2018): one DDPG search per target in the same task with the target fixed and AMC's
    accuracy reward. With a ``work_dir`` the search of target ``t`` is checkpointed in
    ``work_dir/amc-<t>`` every ``CHECKPOINT_EVERY`` episodes and continues from there when run again."""

    searches = True
    resumable = True
    summary = "AMC (He et al. 2018): one DDPG search per target"
    CHECKPOINT_EVERY = 25  # episodes between saves of a search with a work_dir

    def search(self, task: PruningTask, target: float, episodes: int = 100, seed: int = 0) -> SearchResult:
        """As ``Searcher.search``; a search continued from the work folder counts the seconds it ran before."""
        state = None if self.work_dir is None else self._folder(target) / "resume" / "state.json"
        saved = state is not None and state.exists()
        earlier = float(read_json(state, "AMC search state")["monitor"]["seconds"]) if saved else 0.0
        result = super().search(task, target, episodes, seed)
        return dataclasses.replace(result, seconds=result.seconds + earlier)

    def _folder(self, target: float) -> Path:
        assert self.work_dir is not None
        return self.work_dir / f"amc-{target:g}"

    def _search(self, task, target, episodes, rng):  # type: ignore[no-untyped-def]
        from autoprune.agents.conditional import SearchConfig, search

        episodes = max(episodes, 2)
        config = SearchConfig(agent="ddpg", episodes=episodes, target_low=target, target_high=target,
                              seed=int(rng.integers(1 << 30)),
                              checkpoint_every=episodes if self.work_dir is None else min(self.CHECKPOINT_EVERY, episodes))
        amc_task = task.derive(reward="accuracy")
        with contextlib.ExitStack() as stack:
            if self.work_dir is None:
                out = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            else:
                out = self._folder(target)
            policy = search(out, config, task=amc_task, progress=False, resume=(out / "resume" / "agent.zip").exists())
            explored = [b["strategy"] for b in policy.meta["best_per_target_bin"].values()]
        candidates = [np.asarray(s) for s in explored] + [policy.strategy(target)]
        best = max(candidates, key=task.score)
        return best, config.episodes
