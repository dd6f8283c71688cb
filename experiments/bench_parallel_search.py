"""Search throughput with N Ray workers against one, side by side in one run.

The same ResNet-20 search (DDPG, the same seed and episode count) runs in this process with one
torch thread, then on Ray with 1 and with ``workers`` workers of one thread each. Reported: episodes
per second, the speedup over one Ray worker, and the time the driver spends on the agent's updates
per episode -- with W workers the driver must update the agent for W episodes in the time one
episode takes on a worker, which is where scaling stops.

    python -m experiments.bench_parallel_search --workers 2 --episodes 40
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import torch
from stable_baselines3 import TD3

from autoprune.agents import SearchConfig, search
from autoprune.agents.parallel import connect, disconnect
from autoprune.task import PruningTask
from experiments.common import ProxyTaskConfig, checkpoint_task, run_script, write_report


@dataclass
class Config(ProxyTaskConfig):
    proxy_images: int = 2000
    workers: int = 2
    episodes: int = 40
    warmup: int = 10
    seed: int = 0


def timed_train(seconds: list[float]):  # type: ignore[no-untyped-def]
    """Wrap SB3's DDPG ``train`` (TD3's, which DDPG inherits) to add up the driver's time on agent updates."""
    original = TD3.train

    def train(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - t0)

    return original, train


def run(task: PruningTask, cfg: Config, workers: int, in_process: bool) -> dict:
    # "auto": the Ray instance main() started, also for one worker (without an address it would run here)
    config = SearchConfig(episodes=cfg.episodes, warmup_episodes=cfg.warmup, seed=cfg.seed,
                          checkpoint_every=cfg.episodes, workers=workers, address=None if in_process else "auto")
    updates: list[float] = []
    original, wrapped = timed_train(updates)
    TD3.train = wrapped
    try:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            search(out, config, task=task, progress=False)
            seconds = time.perf_counter() - t0
    finally:
        TD3.train = original
    learned = cfg.episodes - cfg.warmup
    return {"workers": workers, "in_process": in_process, "seconds": seconds, "episodes_per_s": cfg.episodes / seconds,
            "agent_update_s_per_episode": sum(updates) / max(learned, 1)}


def main(cfg: Config) -> None:
    torch.set_num_threads(cfg.threads)  # 1 by default: as each worker has
    task = checkpoint_task(cfg)
    rows = [run(task, cfg, 1, in_process=True)]
    print(rows[-1], flush=True)
    connect(cfg.workers)  # one local instance for both Ray runs, so that start-up is not timed
    try:
        for workers in (1, cfg.workers):
            rows.append(run(task, cfg, workers, in_process=False))
            print(rows[-1], flush=True)
    finally:
        disconnect()
    one = rows[1]["episodes_per_s"]
    for r in rows:
        r["speedup_over_one_ray_worker"] = r["episodes_per_s"] / one
    md = ["| run | workers | episodes/s | speedup vs 1 Ray worker | agent update s / episode |", "|---|---|---|---|---|"]
    for r in rows:
        where = "in process" if r["in_process"] else "Ray"
        md.append(f"| {where} | {r['workers']} | {r['episodes_per_s']:.3f} | {r['speedup_over_one_ray_worker']:.2f}x | "
                  f"{r['agent_update_s_per_episode']:.4f} |")
    write_report("bench_parallel_search", cfg, {"rows": rows}, "\n".join(md))


if __name__ == "__main__":
    run_script(main, Config)
