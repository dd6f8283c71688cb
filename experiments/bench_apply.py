"""Time ``PruningSpace.apply`` (physical pruning of a copy of the model) at random strategies."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from autoprune import models
from autoprune.pruning import PruningSpace
from experiments.common import run_script, write_report


@dataclass
class Config:
    arch: str = "resnet56"
    repeats: int = 30
    seed: int = 0
    threads: int = 1


def main(cfg: Config) -> None:
    torch.set_num_threads(cfg.threads)
    model = models.create(cfg.arch)
    t0 = time.perf_counter()
    space = PruningSpace(model, torch.randn(1, 3, 32, 32))
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(cfg.seed)
    space.apply(np.full(space.num_groups, 0.5))  # warm-up, and computes the l1 scores once
    times = []
    for _ in range(cfg.repeats):
        strategy = rng.uniform(0.1, 1.0, space.num_groups)
        t0 = time.perf_counter()
        space.apply(strategy)
        times.append(1000 * (time.perf_counter() - t0))
    results = {"groups": space.num_groups, "space_build_s": build_s, "apply_ms_median": statistics.median(times),
               "apply_ms_min": min(times), "apply_ms_max": max(times)}
    md = (f"| model | groups | space build (s) | apply median (ms) | min | max |\n|---|---|---|---|---|---|\n"
          f"| {cfg.arch} | {space.num_groups} | {build_s:.2f} | {results['apply_ms_median']:.1f} | "
          f"{results['apply_ms_min']:.1f} | {results['apply_ms_max']:.1f} |")
    write_report(f"bench_apply_{cfg.arch}", cfg, results, md)


if __name__ == "__main__":
    run_script(main, Config)
