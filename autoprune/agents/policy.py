"""A trained conditional policy: maps (layer state, target) to keep ratios, for any target.

A policy directory holds ``policy.json`` (metadata: base model fingerprint, group list, the
``PruningSettings`` record, target range, data set, seed, versions, best strategy found per target
bin), ``policy.pt`` (the network weights) and ``importance.pt`` (the channel importance scores the
search ranked channels by, so that a query prunes the same channels without data even for a
data-dependent criterion); both load with ``weights_only=True``. Resumable search state lives in ``resume/``.

A policy searched on several base models (``search`` with several checkpoints) records each in
``bases`` (fingerprint, architecture, checkpoint, groups, input shape, data set, episodes, best strategy
per target bin); the top-level keys (``base_fingerprint``, ``arch``, ``groups``, ``checkpoint``,
``best_per_target_bin``, ...) describe the first, as a single-model policy's do, and the importance
scores of base ``i > 0`` are in ``importance-{i}.pt``. The policy binds to any of its bases without
``transfer``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

from autoprune.agents.algorithms import ALGORITHM_CLASSES, NET_ARCH
from autoprune.agents.common import fingerprint, group_signature
from autoprune.errors import AutopruneError
from autoprune.pruning import PruningSpace, check_target
from autoprune.task import PruningSettings, StrategyEpisode, make_prior
from autoprune.task.observation import make_observation
from autoprune.utils import load_tensors, read_json

POLICY_FORMAT = "autoprune.policy/1"
IMPORTANCE_FILE = "importance.pt"


def importance_file(base: int) -> str:
    """The file of base model ``base``'s importance scores in a policy directory."""
    return IMPORTANCE_FILE if base == 0 else f"importance-{base}.pt"


def policy_bases(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The base models a policy was searched on, in search order: ``meta["bases"]`` for a search on
    several, else the one the top-level keys describe (same record layout)."""
    if meta.get("bases"):
        return list(meta["bases"])
    return [{"fingerprint": meta["base_fingerprint"], "arch": meta.get("arch"), "num_classes": meta.get("num_classes"),
             "checkpoint": meta.get("checkpoint"), "groups": meta["groups"], "input_shape": meta.get("input_shape"),
             "dataset": meta.get("dataset"), "val_size": meta.get("val_size"),
             "best_per_target_bin": meta.get("best_per_target_bin", {})}]


class _SpacesOnly(gym.Env):
    """An environment with the right spaces and nothing else: enough to rebuild a policy network."""

    def __init__(self, features: int) -> None:
        self.observation_space = gym.spaces.Box(0.0, 1.0, (features,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[no-untyped-def]
        return np.zeros(self.observation_space.shape, np.float32), {}

    def step(self, action):  # type: ignore[no-untyped-def]
        return np.zeros(self.observation_space.shape, np.float32), 0.0, True, False, {}


def build_network(agent: str, observation: str = "layer") -> Any:
    """An untrained SB3 policy network of the given agent's architecture, for an observation set."""
    cls = ALGORITHM_CLASSES[agent]
    kwargs: dict[str, Any] = {"policy_kwargs": {"net_arch": NET_ARCH}, "verbose": 0}
    if agent != "ppo":
        kwargs["buffer_size"] = 1
    else:
        kwargs["n_steps"] = 2
        kwargs["batch_size"] = 2
    return cls("MlpPolicy", _SpacesOnly(len(make_observation(observation).features)), **kwargs).policy


class ConditionalPolicy:
    """A pruning policy conditioned on the target FLOPs ratio.

    ``strategy(target)`` rolls the policy out deterministically over the groups of the base model it
    was trained for (the action wall guarantees the budget); ``prune(model, target)`` returns the
    physically pruned model.
    """

    def __init__(self, network: Any, meta: dict[str, Any], space: PruningSpace | None = None,
                 scores: Sequence[np.ndarray] | None = None,
                 base_scores: Sequence[Sequence[np.ndarray] | None] | None = None) -> None:
        self.network = network
        self.meta = meta
        self.space: PruningSpace | None = None
        self.scores: list[np.ndarray] | None = list(scores) if scores is not None else None
        # the saved importance scores of every base model (``policy_bases`` order; ``scores`` are the first's)
        count = len(policy_bases(meta))
        saved = list(base_scores) if base_scores is not None else [self.scores]
        self._saved_scores: list[list[np.ndarray] | None] = [
            None if s is None else list(s) for s in (saved + [None] * count)[:count]]
        self.base: int | None = None  # index of the base model bound (None: unbound or transferred)
        self._transferred = False
        if space is not None:
            self.bind(space)

    @property
    def target_range(self) -> tuple[float, float]:
        low, high = self.meta["target_range"]
        return float(low), float(high)

    @property
    def settings(self) -> PruningSettings:
        return PruningSettings.from_policy_meta(self.meta)

    @property
    def transferred(self) -> bool:
        """Bound to a model the policy was not searched on (``bind(..., transfer=True)``)."""
        return self._transferred

    def bind(self, space: PruningSpace, model_fingerprint: str | None = None,
             scores: Sequence[np.ndarray] | None = None, data: Any = None, transfer: bool = False) -> ConditionalPolicy:
        """Attach the pruning space of the base model; refuses a model the policy was not trained for
        unless ``transfer``: then the policy rolls out on the foreign model's own groups, priors and
        importance scores (computed for the policy's criterion, on ``data`` where it needs data).

        ``scores`` are the importance scores to rank channels by (default: those saved with the
        policy, else computed for its criterion, on ``data`` where the criterion needs it)."""
        fp = model_fingerprint or fingerprint(space.model)
        signature = group_signature(space)
        bases = policy_bases(self.meta)
        base = next((i for i, b in enumerate(bases) if b["fingerprint"] == fp and b["groups"] == signature), None)
        if base is None and not transfer:
            same_shape = [b for b in bases if b["groups"] == signature]
            if len(bases) == 1 and not same_shape:
                raise AutopruneError(
                    f"this policy was trained for a {self.meta.get('arch', '?')} with {len(self.meta['groups'])} channel "
                    f"groups; the given model has {space.num_groups} groups of other shapes: pass --transfer to apply it "
                    "to another architecture, or train a policy for it with `autoprune search`")
            if len(bases) == 1:
                raise AutopruneError(
                    f"this policy was trained for base model {self.meta['base_fingerprint']} but the given model's "
                    f"weights differ ({fp}): use the checkpoint the search used, pass --transfer to apply it anyway, "
                    "or search again")
            searched = ", ".join(f"{b.get('arch', '?')} {b['fingerprint']}" for b in bases)
            what = ("its weights differ" if same_shape
                    else f"its {space.num_groups} channel groups match none of theirs")
            raise AutopruneError(
                f"this policy was trained for the base models {searched}, and the given model ({fp}) is none of them "
                f"({what}): pass --transfer to apply it anyway, or search a policy that includes it")
        self._transferred = base is None
        self.base = base
        criterion = self.settings.criterion
        if scores is None and base is not None:
            scores = self._saved_scores[base]
        if scores is not None:
            space.set_importance(criterion, scores)
        self.scores = space.importance(criterion, data)
        if base is not None and self._saved_scores[base] is None:
            self._saved_scores[base] = self.scores
        self.space = space
        return self

    def _episode(self) -> StrategyEpisode:
        if self.space is None or self.scores is None:
            raise AutopruneError("the policy is not bound to its base model: load it with load_policy(dir, checkpoint=...)"
                                 " or call policy.prune(model, target)")
        s = self.settings
        prior = make_prior(s.prior, self.space, s.min_keep, self.scores)
        return StrategyEpisode(self.space, s.min_keep, s.tolerance, s.action_mode, s.fill_budget, prior, s.observation)

    def _check_target(self, target: float, allow_extrapolation: bool) -> float:
        target = check_target(target)
        low, high = self.target_range
        if not allow_extrapolation and not low - 1e-9 <= target <= high + 1e-9:
            raise AutopruneError(f"target {target:g} is outside the range this policy was trained for "
                                 f"[{low:g}, {high:g}]; pass --allow-extrapolation to use it anyway")
        return target

    def strategy(self, target: float, allow_extrapolation: bool = False) -> np.ndarray:
        """Keep ratios for ``target`` from a deterministic rollout."""
        return self.rollouts(target, 1, allow_extrapolation=allow_extrapolation)[0]

    def rollouts(self, target: float, k: int = 1, noise: float = 0.1, seed: int = 0,
                 allow_extrapolation: bool = False) -> list[np.ndarray]:
        """The deterministic strategy, then ``k - 1`` rollouts with Gaussian noise on the actions."""
        target = self._check_target(target, allow_extrapolation)
        episode = self._episode()
        rng = np.random.default_rng(seed)
        strategies = []
        for i in range(k):
            obs = episode.reset(target)
            while not episode.done:
                action, _ = self.network.predict(obs, deterministic=True)
                a = float(np.asarray(action).reshape(-1)[0])
                if i > 0:
                    a = float(np.clip(a + rng.normal(0, noise), -1, 1))
                episode.step(a)
                obs = episode.observation()
            strategies.append(episode.strategy.copy())
        return strategies

    def best_strategy(self, target: float, score: Callable[[np.ndarray], float], k: int = 1, seed: int = 0,
                      allow_extrapolation: bool = False) -> tuple[np.ndarray, float, int]:
        """The best of ``k`` rollouts (deterministic + noisy) and the search's best strategies that meet
        the budget for ``target``, by ``score`` (e.g. the proxy). Returns (strategy, score, candidates scored)."""
        candidates = self.rollouts(target, max(k, 1), seed=seed, allow_extrapolation=allow_extrapolation)
        assert self.space is not None
        settings = self.settings
        # other groups when transferred; a search on several models found strategies for each
        found_by_search = {} if self.base is None else policy_bases(self.meta)[self.base].get("best_per_target_bin", {})
        for found in found_by_search.values():
            strategy = np.asarray(found["strategy"])
            if target - settings.tolerance <= self.space.flops_ratio(strategy) <= target + 1e-12:
                # found for a nearby target: spend this target's budget too, as the rollouts do
                candidates.append(self.space.fill(strategy, target) if settings.fill_budget else strategy)
        scores = [score(s) for s in candidates]
        best = int(np.argmax(scores))
        return candidates[best], scores[best], len(candidates)

    def prune(self, model: nn.Module, target: float, allow_extrapolation: bool = False, transfer: bool = False,
              data: Any = None) -> nn.Module:
        """Prune ``model`` (the policy's base model, or with ``transfer`` another one) for ``target``;
        returns a new, smaller model."""
        if self.space is None or self.space.model is not model:
            fp = fingerprint(model)
            self.bind(policy_space(model, self.meta, model_fingerprint=fp), fp, data=data, transfer=transfer)
        assert self.space is not None
        return self.space.apply(self.strategy(target, allow_extrapolation), self.settings.criterion)

    def save(self, directory: str | os.PathLike) -> None:
        from autoprune.agents.common import torch_save_atomic, write_json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch_save_atomic({k: v.detach().cpu() for k, v in self.network.state_dict().items()}, directory / "policy.pt")
        for base, scores in enumerate(self._saved_scores):
            if scores is not None:
                torch_save_atomic({"criterion": self.settings.criterion,
                                   "scores": [torch.as_tensor(np.asarray(s, dtype=np.float64)) for s in scores]},
                                  directory / importance_file(base))
        write_json(directory / "policy.json", self.meta)


def policy_space(model: nn.Module, meta: dict[str, Any], input_shape: Sequence[int] | None = None,
                 model_fingerprint: str | None = None) -> PruningSpace:
    """The pruning space a policy sees on ``model`` (inputs shaped as the policy's data -- for a policy of
    several base models, that of the base with the model's fingerprint -- or ``input_shape``)."""
    if input_shape is None and meta.get("bases"):
        fp = model_fingerprint or fingerprint(model)
        input_shape = next((b.get("input_shape") for b in meta["bases"] if b["fingerprint"] == fp), None)
    return PruningSpace(model, torch.zeros(1, *(input_shape or meta["input_shape"])),
                        round_to=PruningSettings.from_policy_meta(meta).round_to)


def _load_scores(directory: Path, criterion: str, base: int = 0) -> list[np.ndarray] | None:
    path = directory / importance_file(base)
    if not path.is_file():
        return None  # saved before scores were stored: they are recomputed for the criterion
    saved = load_tensors(path, "importance scores")
    try:
        if saved["criterion"] != criterion:
            raise ValueError(f"scores of criterion {saved['criterion']!r}")
        return [t.numpy() for t in saved["scores"]]
    except (ValueError, RuntimeError, OSError, EOFError, KeyError, TypeError) as exc:
        raise AutopruneError(f"{path} is damaged ({str(exc).splitlines()[0][:120] or exc.__class__.__name__})") from None


def read_policy(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A policy directory's checked metadata (``policy.json``) and network weights (``policy.pt``)."""
    directory = Path(directory)
    meta_path, weights_path = directory / "policy.json", directory / "policy.pt"
    if not meta_path.is_file() or not weights_path.is_file():
        raise AutopruneError(f"{directory} is not a policy directory (policy.json and policy.pt are needed); "
                             "create one with `autoprune search`")
    meta = read_json(meta_path, "policy metadata")
    state = load_tensors(weights_path, "policy weights")
    if not isinstance(meta, dict) or meta.get("format") != POLICY_FORMAT:
        raise AutopruneError(f"{meta_path} is not an autoprune policy (format {POLICY_FORMAT!r} expected)")
    if meta.get("agent") not in ALGORITHM_CLASSES:
        raise AutopruneError(f"{meta_path} names an unknown agent {meta.get('agent')!r}")
    try:
        PruningSettings.from_policy_meta(meta)
    except (AutopruneError, TypeError) as exc:
        raise AutopruneError(f"{meta_path} holds invalid settings: {exc}") from None
    return meta, state


def load_policy(directory: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
                model: nn.Module | None = None, data: Any = None, transfer: bool = False,
                input_shape: Sequence[int] | None = None) -> ConditionalPolicy:
    """Load a policy directory; bind it to ``model`` / ``checkpoint`` (default: the search's checkpoint --
    the first base model's --, if present). Any base model the policy was searched on binds as it is.

    ``data`` (training batches) is needed only for an old policy of a data-dependent criterion saved
    without its importance scores, or to transfer one to another model. ``transfer=True`` binds the
    policy to a model it was not searched on (see ``ConditionalPolicy.bind``)."""
    directory = Path(directory)
    meta, state = read_policy(directory)
    weights_path = directory / "policy.pt"
    settings = PruningSettings.from_policy_meta(meta)
    network = build_network(meta["agent"], settings.observation)
    try:
        network.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise AutopruneError(f"{weights_path} does not match a {meta['agent']} policy: {str(exc).splitlines()[0][:160]}") from None
    network.set_training_mode(False)
    base_scores = [_load_scores(directory, settings.criterion, i) for i in range(len(policy_bases(meta)))]
    policy = ConditionalPolicy(network, meta, scores=base_scores[0], base_scores=base_scores)
    if model is None and checkpoint is None and meta.get("checkpoint") and Path(meta["checkpoint"]).is_file():
        checkpoint = meta["checkpoint"]
    if checkpoint is not None:
        from autoprune.checkpoint import load_model

        model = load_model(checkpoint)[0]
    if model is not None:
        fp = fingerprint(model)
        policy.bind(policy_space(model, meta, input_shape, fp), fp, data=data, transfer=transfer)
    return policy
