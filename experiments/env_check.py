"""Random-action episodes of the environment: budget rule and where an episode's time goes."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from autoprune import models
from autoprune.checkpoint import load_model
from autoprune.data import load_splits
from autoprune.envs import ChannelPruningEnv
from autoprune.task import PruningTask
from experiments.common import ProxyTaskConfig, run_script, write_report


@dataclass
class Config(ProxyTaskConfig):
    checkpoint: str = ""  # a trained model; empty = random init (the budget rule and timings do not depend on weights)
    proxy_images: int = 500
    arch: str = "resnet20"
    data: str = "cifar10"
    episodes: int = 200
    target_low: float = 0.2
    target_high: float = 0.9
    seed: int = 0
    name: str = ""  # report name: <out_dir>/<name>.md and .json (default env_check_<arch>)
    out_dir: str = "docs/results"


def main(cfg: Config) -> None:
    torch.set_num_threads(cfg.threads)
    splits = load_splits(cfg.data, cfg.data_dir)
    model = load_model(cfg.checkpoint)[0] if cfg.checkpoint else models.create(cfg.arch, splits.num_classes)
    task = PruningTask(model, splits, cfg.settings())
    env = ChannelPruningEnv(task, target_range=(cfg.target_low, cfg.target_high))
    env.action_space.seed(cfg.seed)
    met, gaps, episode_s, forward_s, prune_s = 0, [], [], [], []
    t0 = time.perf_counter()
    for i in range(cfg.episodes):
        env.reset(seed=cfg.seed + i)
        done = False
        while not done:
            _, _, done, _, info = env.step(env.action_space.sample())
        ratio, target = info["achieved_flops_ratio"], info["target"]
        met += target - 0.02 <= ratio <= target
        gaps.append(target - ratio)
        if not info["time"]["cached"]:
            episode_s.append(info["time"]["episode_s"])
            forward_s.append(info["time"]["proxy_forward_s"])
            prune_s.append(info["time"]["prune_s"])
    overhead = 1 - sum(forward_s) / sum(episode_s)
    results = {
        "groups": task.space.num_groups, "episodes": cfg.episodes, "budget_met": met, "budget_met_fraction": met / cfg.episodes,
        "target_minus_achieved_max": max(gaps), "target_minus_achieved_mean": float(np.mean(gaps)),
        "uncached_episodes": len(episode_s), "episode_s_mean": float(np.mean(episode_s)),
        "proxy_forward_s_mean": float(np.mean(forward_s)), "prune_s_mean": float(np.mean(prune_s)),
        "overhead_fraction": overhead, "total_s": time.perf_counter() - t0,
    }
    proxy = f"{cfg.proxy}, {cfg.proxy_measure}, {task.proxy.num_images} images"
    md = (f"| model | proxy | groups | episodes | budget met | max (target - achieved) | episode (s) | proxy forward (s) | "
          f"prune (s) | overhead |\n|---|---|---|---|---|---|---|---|---|---|\n"
          f"| {cfg.arch} | {proxy} | {task.space.num_groups} | {cfg.episodes} | {met}/{cfg.episodes} | {max(gaps):.4f} | "
          f"{results['episode_s_mean']:.3f} | {results['proxy_forward_s_mean']:.3f} | {results['prune_s_mean']:.3f} | "
          f"{100 * overhead:.1f}% |")
    write_report(cfg.name or f"env_check_{cfg.arch}", cfg, results, md, out_dir=cfg.out_dir)


if __name__ == "__main__":
    run_script(main, Config)
