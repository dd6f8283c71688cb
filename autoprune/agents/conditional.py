"""``search``: train one conditional policy for a base model (CACP-style: targets sampled per episode).

With several base models (``checkpoint=[a, b, ...]``) every episode draws a model, then a target; each
model keeps its own pruning space, importance scores, proxy and reward baseline, and the observation
set must mean the same on all of them (``SHARED_OBSERVATIONS``: ``transferable``). ``init_policy``
starts the agent from a trained policy's network (actor and critic) to adapt it quickly to new models.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch.nn as nn
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from autoprune.agents.algorithms import (
    AgentSettings,
    create_agent,
    list_agents,
    load_agent,
    noise_sigma,
    training_callbacks,
)
from autoprune.agents.common import SearchMonitor, fingerprint, group_signature, write_json
from autoprune.agents.policy import POLICY_FORMAT, ConditionalPolicy, policy_bases, read_policy
from autoprune.data import DataSplits
from autoprune.envs import ChannelPruningEnv
from autoprune.envs.channel_pruning import SHARED_OBSERVATIONS, check_shared_observation, check_shared_rules
from autoprune.errors import AutopruneError
from autoprune.task import PruningSettings, PruningTask, make_task
from autoprune.utils import describe_differences, read_json, versions


@dataclass
class SearchConfig:
    """A search's own settings; ``settings`` holds the pruning problem's (shared with every other command)."""

    agent: str = "ddpg"
    episodes: int = 300
    # random-action episodes first; default min(100, episodes // 3), or 0 when starting from init_policy
    warmup_episodes: int | None = None
    target_low: float = 0.2
    target_high: float = 0.9
    settings: PruningSettings = field(default_factory=PruningSettings)
    # the agents' hyper-parameters: their defaults live in AgentSettings
    gamma: float = AgentSettings.gamma
    learning_rate: float = AgentSettings.learning_rate
    noise_sigma: float = AgentSettings.noise_sigma
    noise_decay: float = AgentSettings.noise_decay
    seed: int = 0
    checkpoint_every: int = 25
    workers: int = 1  # episodes run at once, each in a Ray worker (1: in this process, no Ray)
    address: str | None = None  # a Ray cluster to run the workers on ("auto" or HOST:PORT)
    threads_per_worker: int = 1  # torch threads (and Ray CPUs) of each worker
    init_policy: str | None = None  # a policy directory whose network (same agent, observation set) the agent starts from

    def __post_init__(self) -> None:
        if self.agent not in list_agents():
            raise AutopruneError(f"unknown agent {self.agent!r}; choose one of {', '.join(list_agents())}")
        if self.episodes < 1:
            raise AutopruneError(f"episodes must be >= 1, got {self.episodes}")
        if self.init_policy is not None:
            self.init_policy = str(self.init_policy)
        if self.warmup_episodes is None:
            # a trained policy needs no random-action warm-up: its own (noisy) actions fill the replay buffer
            self.warmup_episodes = 0 if self.init_policy else min(100, self.episodes // 3)
        if not 0 <= self.warmup_episodes <= self.episodes:
            raise AutopruneError("warmup_episodes must be between 0 and the number of episodes")
        if self.checkpoint_every < 1:
            raise AutopruneError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.workers < 1 or self.threads_per_worker < 1:
            raise AutopruneError(f"workers and threads_per_worker must be >= 1, got {self.workers} and "
                                 f"{self.threads_per_worker}")

    @property
    def parallel(self) -> bool:
        return self.workers > 1 or self.address is not None


# SearchConfig fields added after some searches were saved: a saved config without one reads as this default
_ADDED_FIELDS: dict[str, Any] = {"init_policy": None}


def _resumable(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed search must share with the saved one (it may run longer, save more often, or
    run its workers elsewhere; the number of workers fixes the replay buffer's layout, so it must match)."""
    config = {**_ADDED_FIELDS, **config}
    if isinstance(config.get("settings"), dict):
        config["settings"] = PruningSettings.normalized(config["settings"])
    return {k: v for k, v in config.items() if k not in ("episodes", "checkpoint_every", "address", "threads_per_worker")}


def worker_env(model: nn.Module | list[nn.Module], splits: DataSplits | list[DataSplits], settings: PruningSettings,
               scores: list, baselines: dict[float, float] | list[dict[float, float]],
               target_range: tuple[float, float]) -> ChannelPruningEnv:
    """The environment one parallel-search worker runs: its own task over the shipped model and data
    (for a search on several base models: lists of models, splits, scores and baselines, one per model)."""
    if isinstance(model, nn.Module):
        return ChannelPruningEnv(PruningTask(model, splits, settings, scores=scores, baselines=baselines),  # type: ignore[arg-type]
                                 target_range=target_range)
    tasks = [PruningTask(m, d, settings, scores=s, baselines=b)
             for m, d, s, b in zip(model, splits, scores, baselines)]  # type: ignore[arg-type]
    return ChannelPruningEnv(tasks, target_range=target_range)


def _environment(tasks: list[PruningTask], config: SearchConfig) -> Any:
    """The search's environment: in this process, or ``config.workers`` copies in Ray workers."""
    target_range = (config.target_low, config.target_high)
    if not config.parallel:
        return ChannelPruningEnv(tasks[0] if len(tasks) == 1 else tasks, target_range=target_range)
    from autoprune.agents.parallel import RayVecEnv, connect

    for task in tasks:
        task.check_target_range(*target_range)
    connect(config.workers, config.address, config.threads_per_worker)
    # the reward baseline is measured once here, not once per worker
    baselines = [task.prior_baselines(*target_range) if task.settings.reward == "relative" else {} for task in tasks]
    if len(tasks) == 1:
        task = tasks[0]
        inputs = {"model": task.model, "splits": task.splits, "settings": task.settings, "scores": task.scores,
                  "baselines": baselines[0]}
    else:
        inputs = {"model": [t.model for t in tasks], "splits": [t.splits for t in tasks], "settings": tasks[0].settings,
                  "scores": [t.scores for t in tasks], "baselines": baselines}
    return RayVecEnv(partial(worker_env, target_range=target_range), config.workers, inputs,
                     num_cpus=config.threads_per_worker)


class ModelsMonitor(SearchMonitor):
    """The search monitor of a search on several base models: it also counts each model's episodes and
    keeps the best strategy per target bin of each model (``state["models"]``), since strategies of one
    model do not apply to another. The episode's model is logged to TensorBoard as ``search/model``."""

    def __init__(self, *args: Any, models: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state.setdefault("models", [{"episodes": 0, "best": {}} for _ in range(models)])

    def _log_episode(self, info: dict[str, Any], reward: float) -> None:
        record = self.state["models"][int(info["model"])]
        record["episodes"] += 1
        self.state["best"] = record["best"]  # the base class updates the best strategies of this episode's model
        self.logger.record("search/model", int(info["model"]))
        super()._log_episode(info, reward)


def _base_record(task: PruningTask) -> dict[str, Any]:
    """What a policy records of one of its base models (``policy_bases``)."""
    return {"fingerprint": fingerprint(task.model), "arch": task.source.get("arch"),
            "num_classes": task.source.get("num_classes"), "checkpoint": task.source.get("checkpoint"),
            "groups": group_signature(task.space), "input_shape": list(task.splits.input_shape),
            "dataset": task.splits.train.name, "val_size": task.splits.val_size}


def _read_init_policy(config: SearchConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The meta and weights of ``config.init_policy``, refused unless its agent and observation set match."""
    directory = config.init_policy
    meta, state = read_policy(directory)  # type: ignore[arg-type]
    if meta["agent"] != config.agent:
        raise AutopruneError(f"--init-policy {directory} holds a {meta['agent']} policy but this search trains a "
                             f"{config.agent} agent: use --agent {meta['agent']}")
    observation = PruningSettings.from_policy_meta(meta).observation
    if observation != config.settings.observation:
        raise AutopruneError(f"--init-policy {directory} sees the {observation!r} observation but this search the "
                             f"{config.settings.observation!r} one: use --observation {observation}")
    return meta, state


def _check_init_models(config: SearchConfig, meta: dict[str, Any], tasks: list[PruningTask]) -> None:
    """A ``layer`` observation is normalised within a model: its weights mean the same only on the
    architectures (group shapes) the source policy was searched on."""
    if config.settings.observation in SHARED_OBSERVATIONS:
        return
    known = [b["groups"] for b in policy_bases(meta)]
    for task in tasks:
        if group_signature(task.space) not in known:
            raise AutopruneError(
                f"--init-policy {config.init_policy} uses the {config.settings.observation!r} observation, which "
                f"is normalised within its {meta.get('arch', '?')}, so its network means something else on a "
                f"{task.source.get('arch') or 'model'} with other channel groups: search the source policy with "
                "--observation transferable to adapt it to another architecture")


def _tasks(config: SearchConfig, checkpoint: Any, model: nn.Module | None, splits: DataSplits | None,
           data: str | None, data_dir: str | None, val_size: int | None) -> list[PruningTask]:
    """One task per base model: a checkpoint (or a list of them) or a model."""
    checkpoints = list(checkpoint) if isinstance(checkpoint, Sequence) and not isinstance(checkpoint, str) else None
    if checkpoints is None:
        return [make_task(model=model, checkpoint=checkpoint, splits=splits, data=data, data_dir=data_dir,
                          val_size=val_size, settings=config.settings)]
    if not checkpoints:
        raise AutopruneError("give at least one checkpoint")
    if model is not None:
        raise AutopruneError("give the base models either as checkpoints or as a model, not both")
    return [make_task(checkpoint=c, splits=splits, data=data, data_dir=data_dir, val_size=val_size,
                      settings=config.settings) for c in checkpoints]


def _several(checkpoint: Any, task: Any) -> bool:
    given = task if task is not None else checkpoint
    return isinstance(given, Sequence) and not isinstance(given, str) and len(given) > 1


def search(
    out_dir: str | os.PathLike,
    config: SearchConfig | None = None,
    checkpoint: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    model: nn.Module | None = None,
    splits: DataSplits | None = None,
    data: str | None = None,
    data_dir: str | None = None,
    val_size: int | None = None,
    resume: bool = False,
    progress: bool = True,
    task: PruningTask | Sequence[PruningTask] | None = None,
) -> ConditionalPolicy:
    """Train one conditional policy for the base model(s) and save it to ``out_dir``.

    Targets are drawn from ``[target_low, target_high]`` every episode (CACP, Liu et al. 2020, with
    continuous targets); the reward comes from the accuracy proxy on the validation split. The
    directory is checkpointed every ``checkpoint_every`` episodes; ``resume=True`` continues from it.
    The base model is a ``checkpoint``, a ``model`` (with ``splits`` or a data set name), or a ready
    ``task`` whose settings then replace ``config.settings``.

    Several base models -- a list of checkpoints, or of tasks sharing their settings -- are searched by
    one policy: each episode draws one uniformly (from the environment's seeded random generator),
    then a target. They need an observation set that means the same on every model (``--observation
    transferable``); each keeps its own space, importance scores and reward baseline, and the policy
    records them all (``bases`` in ``policy.json``; the top-level keys describe the first). A resumed
    search must name the same models in the same order. The policy returned is bound to the first.

    ``config.init_policy`` starts the agent from a saved policy's network (actor and critic; the same
    agent and observation set), with no random-action warm-up unless ``warmup_episodes`` asks for one.
    """
    config = config or SearchConfig()
    out = Path(out_dir)
    resume_dir = out / "resume"
    if (out / "policy.json").exists() and not resume:
        raise AutopruneError(f"{out} already holds a policy: pass --resume to continue that search or choose another --out")
    if task is not None:
        given = [task] if isinstance(task, PruningTask) else list(task)
        if not given:
            raise AutopruneError("give at least one task")
        config = replace(config, settings=given[0].settings)
    resuming = resume and (resume_dir / "agent.zip").exists()
    if resume and not resuming:
        raise AutopruneError(f"nothing to resume in {out} (no resume/agent.zip): run without --resume to start a search")
    # a resumed search continues its own agent: the initial policy was read when it started
    init = _read_init_policy(config) if config.init_policy and not resuming else None
    several_given = _several(checkpoint, task)  # refused before any model is loaded
    if several_given and config.init_policy and config.settings.observation not in SHARED_OBSERVATIONS:
        raise AutopruneError(f"--init-policy {config.init_policy} uses the {config.settings.observation!r} "
                             "observation, normalised within each model, so it cannot be searched on several base "
                             "models: start from a policy searched with --observation transferable")
    check_shared_observation(config.settings.observation, 2 if several_given else 1)
    tasks = given if task is not None else _tasks(config, checkpoint, model, splits, data, data_dir, val_size)
    check_shared_rules(tasks)
    if init is not None:
        _check_init_models(config, init[0], tasks)
    bases = [_base_record(t) for t in tasks]
    fingerprints = [b["fingerprint"] for b in bases]
    if len(set(fingerprints)) < len(fingerprints):
        twice = next(f for f in fingerprints if fingerprints.count(f) > 1)
        raise AutopruneError(f"base model {twice} is given more than once: give each base model once")
    env = _environment(tasks, config)
    several = len(tasks) > 1
    first = tasks[0]
    space = first.space
    # the top-level keys describe the first base model (as every policy.json has), from its one record
    described = {("base_fingerprint" if k == "fingerprint" else k): v for k, v in bases[0].items()}
    meta = {
        "format": POLICY_FORMAT, "agent": config.agent, **described, "settings": first.settings.to_dict(),
        "target_range": [config.target_low, config.target_high], "proxy_images": first.proxy.num_images,
        "seed": config.seed, "config": asdict(config), "versions": versions(),
    }
    if several:
        meta["bases"] = bases
    if init is not None:
        meta["init_policy"] = {"path": config.init_policy, "agent": init[0]["agent"],
                               "fingerprints": [b["fingerprint"] for b in policy_bases(init[0])],
                               "archs": [b.get("arch") for b in policy_bases(init[0])],
                               "episodes": init[0].get("episodes")}
    lengths = [t.space.num_groups for t in tasks]
    # episodes of several models differ in length: warm-up and PPO's rollouts are counted in mean episodes
    settings = AgentSettings(steps_per_episode=round(sum(lengths) / len(lengths)),
                             warmup_episodes=config.warmup_episodes or 0,
                             gamma=config.gamma, learning_rate=config.learning_rate, noise_sigma=config.noise_sigma,
                             noise_decay=config.noise_decay, seed=config.seed)
    state = None
    if resuming:
        state = read_json(resume_dir / "state.json", "search state")
        saved = [b["fingerprint"] for b in policy_bases(state["meta"])]
        if several or len(saved) > 1:
            if saved != [b["fingerprint"] for b in bases]:
                raise AutopruneError(
                    f"{out} was searched on {len(saved)} base model(s) ({', '.join(saved)}), not on these "
                    f"{len(bases)} in this order: resume with the same --checkpoint options in the same order")
        elif saved[0] != meta["base_fingerprint"]:
            raise AutopruneError(f"{out} was searched with another base model or settings; use the same ones to resume")
        saved_config, this_config = _resumable(state["meta"]["config"]), _resumable(meta["config"])
        if saved_config != this_config:
            raise AutopruneError(f"{out} was searched with another base model or settings; use the same ones to resume "
                                 f"({describe_differences(saved_config, this_config)})")
        if "init_policy" in state["meta"]:
            meta["init_policy"] = state["meta"]["init_policy"]
        agent = load_agent(config.agent, resume_dir / "agent.zip", env, state["noise_sigma"])
        if isinstance(agent, OffPolicyAlgorithm):
            agent.load_replay_buffer(resume_dir / "replay.pkl")
        agent.set_random_seed(config.seed + state["monitor"]["episodes"])
    else:
        agent = create_agent(config.agent, env, settings, tensorboard=str(out / "tb"))
        if init is not None:
            try:
                agent.policy.load_state_dict(init[1])
            except (RuntimeError, KeyError) as exc:
                raise AutopruneError(f"--init-policy {config.init_policy} does not fit a {config.agent} network: "
                                     f"{str(exc).splitlines()[0][:160]}") from None
    out.mkdir(parents=True, exist_ok=True)  # only once the search can start: a refused one leaves nothing
    callbacks = training_callbacks(agent, settings)

    def save(monitor: SearchMonitor) -> None:
        resume_dir.mkdir(parents=True, exist_ok=True)
        agent.save(resume_dir / "agent.zip")
        if isinstance(agent, OffPolicyAlgorithm):
            agent.save_replay_buffer(resume_dir / "replay.pkl")
        write_json(resume_dir / "state.json", {"meta": meta, "monitor": monitor.state, "noise_sigma": noise_sigma(agent)})
        final = dict(meta, episodes=monitor.state["episodes"], search_seconds=monitor.state["seconds"],
                     best_per_target_bin=monitor.state["best"])
        if several:
            final["bases"] = [dict(b, episodes=m["episodes"], best_per_target_bin=m["best"])
                              for b, m in zip(bases, monitor.state["models"])]
            final["best_per_target_bin"] = final["bases"][0]["best_per_target_bin"]
        ConditionalPolicy(agent.policy, final, scores=first.scores, base_scores=[t.scores for t in tasks]).save(out)

    previous = state["monitor"] if state else None
    if several:
        monitor: SearchMonitor = ModelsMonitor(out, config.episodes, config.checkpoint_every, save, previous,
                                               progress=progress, models=len(tasks))
    else:
        monitor = SearchMonitor(out, config.episodes, config.checkpoint_every, save, previous, progress=progress)
    remaining = config.episodes - monitor.state["episodes"]
    try:
        if remaining > 0:
            # the monitor stops the agent after the episodes asked for; episodes are at most max(lengths) steps
            agent.learn(total_timesteps=remaining * max(lengths), callback=[monitor, *callbacks],
                        reset_num_timesteps=state is None, tb_log_name="search")
    except KeyboardInterrupt:
        save(monitor)
        raise AutopruneError(f"search interrupted after {monitor.state['episodes']} episodes; saved to {out}, "
                             "continue with --resume") from None
    finally:
        if config.parallel:
            env.close()
    if remaining > 0 or not (out / "policy.json").exists():
        save(monitor)  # resuming a finished search leaves its committed files byte for byte as they were
    policy_meta = json.loads((out / "policy.json").read_text())
    return ConditionalPolicy(agent.policy, policy_meta, space, scores=first.scores, base_scores=[t.scores for t in tasks])
