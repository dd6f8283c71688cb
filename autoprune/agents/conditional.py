"""``search``: train one conditional policy for a base model (CACP-style: targets sampled per episode)."""

from __future__ import annotations

import json
import os
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
from autoprune.agents.policy import POLICY_FORMAT, ConditionalPolicy
from autoprune.data import DataSplits
from autoprune.envs import ChannelPruningEnv
from autoprune.errors import AutopruneError
from autoprune.task import PruningSettings, PruningTask, make_task
from autoprune.utils import versions


@dataclass
class SearchConfig:
    """A search's own settings; ``settings`` holds the pruning problem's (shared with every other command)."""

    agent: str = "ddpg"
    episodes: int = 300
    warmup_episodes: int | None = None  # random-action episodes first; default min(100, episodes // 3)
    target_low: float = 0.2
    target_high: float = 0.9
    settings: PruningSettings = field(default_factory=PruningSettings)
    gamma: float = 1.0
    learning_rate: float = 1e-3
    noise_sigma: float = 0.5
    noise_decay: float = 0.99
    seed: int = 0
    checkpoint_every: int = 25
    workers: int = 1  # episodes run at once, each in a Ray worker (1: in this process, no Ray)
    address: str | None = None  # a Ray cluster to run the workers on ("auto" or HOST:PORT)
    threads_per_worker: int = 1  # torch threads (and Ray CPUs) of each worker

    def __post_init__(self) -> None:
        if self.agent not in list_agents():
            raise AutopruneError(f"unknown agent {self.agent!r}; choose one of {', '.join(list_agents())}")
        if self.episodes < 1:
            raise AutopruneError(f"episodes must be >= 1, got {self.episodes}")
        if self.warmup_episodes is None:
            self.warmup_episodes = min(100, self.episodes // 3)
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


def _resumable(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed search must share with the saved one (it may run longer, save more often, or
    run its workers elsewhere; the number of workers fixes the replay buffer's layout, so it must match)."""
    return {k: v for k, v in config.items() if k not in ("episodes", "checkpoint_every", "address", "threads_per_worker")}


def worker_env(model: nn.Module, splits: DataSplits, settings: PruningSettings, scores: list,
               baselines: dict[float, float], target_range: tuple[float, float]) -> ChannelPruningEnv:
    """The environment one parallel-search worker runs: its own task over the shipped model and data."""
    task = PruningTask(model, splits, settings, scores=scores, baselines=baselines)
    return ChannelPruningEnv(task, target_range=target_range)


def _environment(task: PruningTask, config: SearchConfig) -> Any:
    """The search's environment: in this process, or ``config.workers`` copies in Ray workers."""
    target_range = (config.target_low, config.target_high)
    if not config.parallel:
        return ChannelPruningEnv(task, target_range=target_range)
    from autoprune.agents.parallel import RayVecEnv, connect

    task.check_target_range(*target_range)
    connect(config.workers, config.address, config.threads_per_worker)
    # the reward baseline is measured once here, not once per worker
    baselines = task.prior_baselines(*target_range) if task.settings.reward == "relative" else {}
    inputs = {"model": task.model, "splits": task.splits, "settings": task.settings, "scores": task.scores,
              "baselines": baselines}
    return RayVecEnv(partial(worker_env, target_range=target_range), config.workers, inputs,
                     num_cpus=config.threads_per_worker)


def search(
    out_dir: str | os.PathLike,
    config: SearchConfig | None = None,
    checkpoint: str | os.PathLike | None = None,
    model: nn.Module | None = None,
    splits: DataSplits | None = None,
    data: str | None = None,
    data_dir: str | None = None,
    val_size: int | None = None,
    resume: bool = False,
    progress: bool = True,
    task: PruningTask | None = None,
) -> ConditionalPolicy:
    """Train one conditional policy for the base model and save it to ``out_dir``.

    Targets are drawn from ``[target_low, target_high]`` every episode (CACP, Liu et al. 2020, with
    continuous targets); the reward comes from the accuracy proxy on the validation split. The
    directory is checkpointed every ``checkpoint_every`` episodes; ``resume=True`` continues from it.
    The base model is a ``checkpoint``, a ``model`` (with ``splits`` or a data set name), or a ready
    ``task`` whose settings then replace ``config.settings``.
    """
    config = config or SearchConfig()
    out = Path(out_dir)
    resume_dir = out / "resume"
    if (out / "policy.json").exists() and not resume:
        raise AutopruneError(f"{out} already holds a policy: pass --resume to continue that search or choose another --out")
    if task is None:
        task = make_task(model=model, checkpoint=checkpoint, splits=splits, data=data, data_dir=data_dir,
                         val_size=val_size, settings=config.settings)
    else:
        config = replace(config, settings=task.settings)
    env = _environment(task, config)
    space = task.space
    meta = {
        "format": POLICY_FORMAT, "agent": config.agent, "arch": task.source.get("arch"),
        "num_classes": task.source.get("num_classes"), "input_shape": list(task.splits.input_shape),
        "base_fingerprint": fingerprint(task.model), "groups": group_signature(space),
        "settings": task.settings.to_dict(), "target_range": [config.target_low, config.target_high],
        "dataset": task.splits.train.name, "val_size": task.splits.val_size, "proxy_images": task.proxy.num_images,
        "checkpoint": task.source.get("checkpoint"), "seed": config.seed, "config": asdict(config), "versions": versions(),
    }
    settings = AgentSettings(steps_per_episode=space.num_groups, warmup_episodes=config.warmup_episodes or 0,
                             gamma=config.gamma, learning_rate=config.learning_rate, noise_sigma=config.noise_sigma,
                             noise_decay=config.noise_decay, seed=config.seed)
    out.mkdir(parents=True, exist_ok=True)
    state = None
    if resume and (resume_dir / "agent.zip").exists():
        state = json.loads((resume_dir / "state.json").read_text())
        if state["meta"]["base_fingerprint"] != meta["base_fingerprint"] or _resumable(state["meta"]["config"]) != _resumable(meta["config"]):
            raise AutopruneError(f"{out} was searched with another base model or settings; use the same ones to resume")
        agent = load_agent(config.agent, resume_dir / "agent.zip", env, state["noise_sigma"])
        if isinstance(agent, OffPolicyAlgorithm):
            agent.load_replay_buffer(resume_dir / "replay.pkl")
        agent.set_random_seed(config.seed + state["monitor"]["episodes"])
    elif resume:
        raise AutopruneError(f"nothing to resume in {out} (no resume/agent.zip)")
    else:
        agent = create_agent(config.agent, env, settings, tensorboard=str(out / "tb"))
    callbacks = training_callbacks(agent, settings)

    def save(monitor: SearchMonitor) -> None:
        resume_dir.mkdir(parents=True, exist_ok=True)
        agent.save(resume_dir / "agent.zip")
        if isinstance(agent, OffPolicyAlgorithm):
            agent.save_replay_buffer(resume_dir / "replay.pkl")
        write_json(resume_dir / "state.json", {"meta": meta, "monitor": monitor.state, "noise_sigma": noise_sigma(agent)})
        final = dict(meta, episodes=monitor.state["episodes"], search_seconds=monitor.state["seconds"],
                     best_per_target_bin=monitor.state["best"])
        ConditionalPolicy(agent.policy, final, scores=task.scores).save(out)

    monitor = SearchMonitor(out, config.episodes, config.checkpoint_every, save,
                            state["monitor"] if state else None, progress=progress)
    remaining = config.episodes - monitor.state["episodes"]
    try:
        if remaining > 0:
            agent.learn(total_timesteps=remaining * space.num_groups, callback=[monitor, *callbacks],
                        reset_num_timesteps=state is None, tb_log_name="search")
    except KeyboardInterrupt:
        save(monitor)
        raise AutopruneError(f"search interrupted after {monitor.state['episodes']} episodes; saved to {out}, "
                             "continue with --resume") from None
    finally:
        if config.parallel:
            env.close()
    save(monitor)
    policy_meta = json.loads((out / "policy.json").read_text())
    return ConditionalPolicy(agent.policy, policy_meta, space, scores=task.scores)
