"""``search``: train one conditional policy for a base model (CACP-style: targets sampled per episode)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
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
from autoprune.utils import versions


@dataclass
class SearchConfig:
    agent: str = "ddpg"
    episodes: int = 300
    warmup_episodes: int | None = None  # random-action episodes first; default min(100, episodes // 3)
    target_low: float = 0.2
    target_high: float = 0.9
    criterion: str = "l1"
    reward: str = "relative"
    min_keep: float = 0.1
    action_mode: str = "offset"
    prior: str = "global"  # where an offset action of 0 lands: "global" ranking or "uniform" (ChannelPruningEnv)
    round_to: int = 1
    fill_budget: bool = True  # spend what the action wall leaves of the budget (ChannelPruningEnv)
    proxy_images: int | None = None
    proxy_finetune_steps: int = 0  # SGD steps before the proxy scores a strategy (ChannelPruningEnv)
    gamma: float = 1.0
    learning_rate: float = 1e-3
    noise_sigma: float = 0.5
    noise_decay: float = 0.99
    seed: int = 0
    checkpoint_every: int = 25

    def __post_init__(self) -> None:
        if self.agent not in list_agents():
            raise AutopruneError(f"unknown agent {self.agent!r}; choose one of {', '.join(list_agents())}")
        if self.episodes < 1:
            raise AutopruneError(f"episodes must be >= 1, got {self.episodes}")
        if self.warmup_episodes is None:
            self.warmup_episodes = min(100, self.episodes // 3)
        if not 0 <= self.warmup_episodes <= self.episodes:
            raise AutopruneError("warmup_episodes must be between 0 and the number of episodes")


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed search must share with the saved one (it may run longer, or save more often)."""
    return {k: v for k, v in config.items() if k not in ("episodes", "checkpoint_every")}


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
) -> ConditionalPolicy:
    """Train one conditional policy for the base model and save it to ``out_dir``.

    Targets are drawn from ``[target_low, target_high]`` every episode (CACP, Liu et al. 2020, with
    continuous targets); the reward comes from the accuracy proxy on the validation split. The
    directory is checkpointed every ``checkpoint_every`` episodes; ``resume=True`` continues from it.
    """
    config = config or SearchConfig()
    out = Path(out_dir)
    resume_dir = out / "resume"
    if (out / "policy.json").exists() and not resume:
        raise AutopruneError(f"{out} already holds a policy: pass --resume to continue that search or choose another --out")
    meta_in: dict[str, Any] = {}
    arch = num_classes = None
    if checkpoint is not None:
        from autoprune.checkpoint import load_model

        model, payload = load_model(checkpoint)
        meta_in, arch, num_classes = payload["meta"], payload["arch"], payload["num_classes"]
    if model is None:
        raise AutopruneError("give the base model as a checkpoint (or a model)")
    env = ChannelPruningEnv(model=model, splits=splits, data=data or meta_in.get("dataset"), data_dir=data_dir,
                            val_size=val_size or meta_in.get("val_size"), criterion=config.criterion,
                            target_range=(config.target_low, config.target_high), min_keep=config.min_keep,
                            reward=config.reward, proxy_images=config.proxy_images, action_mode=config.action_mode, round_to=config.round_to,
                            fill_budget=config.fill_budget, proxy_finetune_steps=config.proxy_finetune_steps,
                            prior=config.prior)
    space = env.space
    meta = {
        "format": POLICY_FORMAT, "agent": config.agent, "arch": arch, "num_classes": num_classes,
        "input_shape": list(env.splits.input_shape), "base_fingerprint": fingerprint(model), "groups": group_signature(space),
        "criterion": config.criterion, "target_range": [config.target_low, config.target_high], "min_keep": config.min_keep,
        "action_mode": config.action_mode, "prior": config.prior, "round_to": config.round_to,
        "fill_budget": config.fill_budget, "tolerance": env.episode.tolerance, "reward": config.reward, "dataset": env.splits.train.name,
        "val_size": env.splits.val_size, "proxy_images": env.proxy.num_images,
        "proxy_finetune_steps": config.proxy_finetune_steps,
        "checkpoint": str(checkpoint) if checkpoint else None, "seed": config.seed,
        "config": asdict(config), "versions": versions(),
    }
    settings = AgentSettings(steps_per_episode=space.num_groups, warmup_episodes=config.warmup_episodes or 0,
                             gamma=config.gamma, learning_rate=config.learning_rate, noise_sigma=config.noise_sigma,
                             noise_decay=config.noise_decay, seed=config.seed)
    out.mkdir(parents=True, exist_ok=True)
    state = None
    if resume and (resume_dir / "agent.zip").exists():
        state = json.loads((resume_dir / "state.json").read_text())
        if state["meta"]["base_fingerprint"] != meta["base_fingerprint"] or _settings(state["meta"]["config"]) != _settings(meta["config"]):
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
        ConditionalPolicy(agent.policy, final).save(out)

    monitor = SearchMonitor(out, config.episodes, config.checkpoint_every, save,
                            state["monitor"] if state else None, progress=progress)
    remaining = config.episodes - monitor.state["episodes"]
    if remaining > 0:
        try:
            agent.learn(total_timesteps=remaining * space.num_groups, callback=[monitor, *callbacks],
                        reset_num_timesteps=state is None, tb_log_name="search")
        except KeyboardInterrupt:
            save(monitor)
            raise AutopruneError(f"search interrupted after {monitor.state['episodes']} episodes; saved to {out}, "
                                 "continue with --resume") from None
    save(monitor)
    policy_meta = json.loads((out / "policy.json").read_text())
    return ConditionalPolicy(agent.policy, policy_meta, space)
