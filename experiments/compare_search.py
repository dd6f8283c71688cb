"""Agents x rewards x action modes on one base model, same episode budget: which trains the best
conditional policy? Each policy is scored by the proxy at held-out targets, against uniform."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from autoprune.agents import SearchConfig, search
from experiments.common import ProxyTaskConfig, checkpoint_task, run_script, write_report


@dataclass
class Config(ProxyTaskConfig):
    data_dir: str = ""  # data folder when the checkpoint's data set needs one
    agents: str = "ddpg,td3,sac,ppo"
    rewards: str = "relative"
    action_modes: str = "offset"
    episodes: int = 300
    eval_targets: str = "0.3,0.42,0.5,0.63,0.7"
    seeds: str = "0"
    best_of: int = 1  # > 1: score the policy by ConditionalPolicy.best_strategy with this many rollouts
    name: str = "compare_search"


def main(cfg: Config) -> None:
    torch.set_num_threads(cfg.threads)
    targets = [float(t) for t in cfg.eval_targets.split(",")]
    task = checkpoint_task(cfg)
    uniform = {t: task.score(task.space.uniform(t, task.settings.min_keep)) for t in targets}
    rows = []
    for agent in cfg.agents.split(","):
        for reward in cfg.rewards.split(","):
            for mode in cfg.action_modes.split(","):
                for seed in (int(s) for s in cfg.seeds.split(",")):
                    out = tempfile.mkdtemp()
                    t0 = time.perf_counter()
                    config = SearchConfig(agent=agent, episodes=cfg.episodes, seed=seed, checkpoint_every=cfg.episodes)
                    policy = search(out, config, task=task.derive(reward=reward, action_mode=mode), progress=False)
                    seconds = time.perf_counter() - t0
                    shutil.rmtree(out)
                    if cfg.best_of > 1:
                        proxies = {t: policy.best_strategy(t, task.score, cfg.best_of)[1] for t in targets}
                    else:
                        proxies = {t: task.score(policy.strategy(t)) for t in targets}
                    gains = [proxies[t] - uniform[t] for t in targets]
                    rows.append({"agent": agent, "reward": reward, "action_mode": mode, "seed": seed, "seconds": seconds,
                                 "proxy": proxies, "mean_gain_over_uniform": float(np.mean(gains)),
                                 "min_gain_over_uniform": float(np.min(gains))})
                    print(rows[-1], flush=True)
    head = "| agent | reward | action mode | seed | " + " | ".join(f"proxy @{t:g}" for t in targets) + " | mean gain vs uniform | worst gain | search s |"
    lines = [head, "|" + "---|" * (len(targets) + 7),
             "| uniform | — | — | — | " + " | ".join(f"{uniform[t]:.4f}" for t in targets) + " | 0 | 0 | 0 |"]
    for r in rows:
        lines.append(f"| {r['agent']} | {r['reward']} | {r['action_mode']} | {r['seed']} | "
                     + " | ".join(f"{r['proxy'][t]:.4f}" for t in targets)
                     + f" | {r['mean_gain_over_uniform']:+.4f} | {r['min_gain_over_uniform']:+.4f} | {r['seconds']:.0f} |")
    write_report(cfg.name, cfg, {"uniform": uniform, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    run_script(main, Config)
