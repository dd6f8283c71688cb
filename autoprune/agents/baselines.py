"""Baseline searchers: one strategy per target, under the same budget rule as the policy.

Every searcher sees only the environment's interface: the pruning space (FLOPs, importance), the
data-free ``StrategyEpisode`` (whose action wall enforces the budget) and the proxy.

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
========== ==============================================================================================
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import numpy as np

from autoprune.envs import ChannelPruningEnv
from autoprune.registry import Registry


@dataclass
class SearchResult:
    strategy: np.ndarray
    proxy_accuracy: float
    episodes: int  # proxy evaluations spent
    seconds: float


class Searcher:
    """Finds a strategy for one target. ``episodes`` is the budget of proxy evaluations."""

    name = "base"

    def search(self, env: ChannelPruningEnv, target: float, episodes: int = 100, seed: int = 0) -> SearchResult:
        t0 = time.perf_counter()
        strategy, spent = self._search(env, target, episodes, np.random.default_rng(seed))
        return SearchResult(strategy, env.evaluate_strategy(strategy), spent, time.perf_counter() - t0)

    def _search(self, env: ChannelPruningEnv, target: float, episodes: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        raise NotImplementedError


SEARCHERS: Registry[type[Searcher]] = Registry("baseline")


def create_searcher(name: str) -> Searcher:
    return SEARCHERS.get(name)()


def list_searchers() -> list[str]:
    return SEARCHERS.names()


@SEARCHERS.register("uniform")
class Uniform(Searcher):
    def _search(self, env, target, episodes, rng):  # type: ignore[no-untyped-def]
        strategy = env.space.uniform(target, env.min_keep)
        # with coarse rounding (round_to=8 on 16-channel groups) one shared ratio can land far under the
        # target; the policy's episodes get the leftover budget filled, so the baseline gets it too
        return (env.space.fill(strategy, target) if env.episode.fill_budget else strategy), 0


@SEARCHERS.register("global")
class GlobalRanking(Searcher):
    def _search(self, env, target, episodes, rng):  # type: ignore[no-untyped-def]
        return env.space.global_ranking(target, env.space.importance(env.criterion), env.min_keep), 0


class ActionSearcher(Searcher):
    """Searches over action vectors; the action wall turns each into a strategy meeting the budget."""

    def _score(self, env: ChannelPruningEnv, target: float, actions: np.ndarray) -> tuple[float, np.ndarray]:
        strategy = env.episode.run(target, actions)
        return env.evaluate_strategy(strategy), strategy


@SEARCHERS.register("random")
class RandomSearch(ActionSearcher):
    def _search(self, env, target, episodes, rng):  # type: ignore[no-untyped-def]
        best = (-1.0, env.space.uniform(target, env.min_keep))
        for _ in range(max(episodes, 1)):
            best = max(best, self._score(env, target, rng.uniform(-1, 1, env.space.num_groups)), key=lambda r: r[0])
        return best[1], max(episodes, 1)


@SEARCHERS.register("ga")
class GeneticAlgorithm(ActionSearcher):
    population = 16
    elite = 2
    mutation_sigma = 0.2

    def _search(self, env, target, episodes, rng):  # type: ignore[no-untyped-def]
        n = env.space.num_groups
        pop = rng.uniform(-1, 1, (self.population, n))
        env.episode.reset(target)
        # seed with the strategy an all-zero policy gets (the prior) in offset mode, else with uniform
        pop[0] = 0.0 if env.episode.action_mode == "offset" else env.episode.action_for(env.space.uniform(target, env.min_keep)[0])
        fitness = np.array([self._score(env, target, g)[0] for g in pop])
        spent = self.population
        while spent + self.population - self.elite <= episodes:
            order = np.argsort(-fitness)
            children = [pop[i] for i in order[: self.elite]]
            while len(children) < self.population:
                a, b = (pop[max(rng.choice(self.population, 2), key=lambda i: fitness[i])] for _ in range(2))
                child = np.where(rng.random(n) < 0.5, a, b) + rng.normal(0, self.mutation_sigma, n)
                children.append(np.clip(child, -1, 1))
            new_fitness = [fitness[i] for i in order[: self.elite]]
            new_fitness += [self._score(env, target, g)[0] for g in children[self.elite:]]
            pop, fitness = np.array(children), np.array(new_fitness)
            spent += self.population - self.elite
        return env.episode.run(target, pop[int(np.argmax(fitness))]), spent


@SEARCHERS.register("sensitivity")
class Sensitivity(Searcher):
    probe_keep = 0.5

    def _search(self, env, target, episodes, rng):  # type: ignore[no-untyped-def]
        space = env.space
        base = env.evaluate_strategy(np.ones(space.num_groups))
        drops = np.empty(space.num_groups)
        for g in range(space.num_groups):
            probe = np.ones(space.num_groups)
            probe[g] = self.probe_keep
            drops[g] = max(base - env.evaluate_strategy(probe), 0.0)
        tolerance = drops / (drops.max() + 1e-12)  # 0 = robust group, 1 = most sensitive

        def allocate(alpha: float) -> np.ndarray:
            return np.clip(1 - alpha * (1 - 0.8 * tolerance), env.min_keep, 1)

        lo, hi = 0.0, 1.0 / 0.2  # bisect the pruning strength so the FLOPs meet the target
        if space.flops_ratio(allocate(hi)) > target:
            return space.uniform(target, env.min_keep), space.num_groups + 1
        for _ in range(40):
            mid = (lo + hi) / 2
            if space.flops_ratio(allocate(mid)) <= target:
                hi = mid
            else:
                lo = mid
        return allocate(hi), space.num_groups + 1


@SEARCHERS.register("amc")
class AMC(Searcher):
    """One DDPG search per target in the same environment with the target fixed."""

    def _search(self, env, target, episodes, rng):  # type: ignore[no-untyped-def]
        from autoprune.agents.conditional import SearchConfig, search

        config = SearchConfig(agent="ddpg", episodes=max(episodes, 2), target_low=target, target_high=target,
                              criterion=env.criterion, reward="accuracy", min_keep=env.min_keep,
                              action_mode=env.episode.action_mode, prior=env.prior_name, round_to=env.space.round_to,
                              fill_budget=env.episode.fill_budget, proxy_finetune_steps=env.proxy.finetune_steps,
                              proxy_images=env.proxy.num_images, seed=int(rng.integers(1 << 30)),
                              checkpoint_every=max(episodes, 2))
        with tempfile.TemporaryDirectory() as tmp:
            policy = search(tmp, config, model=env.model, splits=env.splits, progress=False)
            explored = [b["strategy"] for b in policy.meta["best_per_target_bin"].values()]
        candidates = [np.asarray(s) for s in explored] + [policy.strategy(target)]
        best = max(candidates, key=env.evaluate_strategy)
        return best, config.episodes
