"""Proxy fidelity: does the proxy rank strategies the way accuracy after a short fine-tune does?

Random strategies at one target (random actions through the action wall); for each: the proxy with
and without adaptive BN, and test accuracy after a short fine-tune on a subset of the training set.
Reports Spearman's rank correlation of each proxy with the fine-tuned accuracy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr

from autoprune.data import DataSplits
from autoprune.task import AccuracyProxy
from autoprune.training import TrainConfig, evaluate, fit
from experiments.common import ProxyTaskConfig, checkpoint_task, run_script, write_report


@dataclass
class Config(ProxyTaskConfig):
    proxy_images: int = 5000
    threads: int = 2
    target: float = 0.5
    strategies: int = 20
    finetune_images: int = 10000
    finetune_epochs: int = 1
    finetune_lr: float = 0.02
    seed: int = 0


def main(cfg: Config) -> None:
    torch.set_num_threads(cfg.threads)
    task = checkpoint_task(cfg)
    plain = AccuracyProxy(task.splits, cfg.proxy_images, adaptive_bn=False)
    rng = np.random.default_rng(cfg.seed)
    subset = task.splits.train.subset(rng.permutation(len(task.splits.train))[: cfg.finetune_images])
    short = DataSplits(subset, task.splits.val, task.splits.test, task.splits.val_size)
    rows = []
    for i in range(cfg.strategies):
        t0 = time.perf_counter()
        strategy = task.episode().run(cfg.target, rng.uniform(-1, 1, task.space.num_groups))
        with_bn = task.score(strategy)
        without_bn = plain.score(task.apply(strategy))
        pruned = task.apply(strategy)
        fit(pruned, short, TrainConfig(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, schedule="cosine", seed=cfg.seed),
            progress=False, log=lambda s: None)
        tuned = evaluate(pruned, task.splits.test)
        rows.append({"strategy": np.round(strategy, 4).tolist(), "flops_ratio": task.space.flops_ratio(strategy),
                     "proxy_adaptive_bn": with_bn, "proxy_no_bn_recalibration": without_bn, "finetuned_test_accuracy": tuned})
        print(f"{i + 1}/{cfg.strategies}: proxy {with_bn:.4f} (no BN recal {without_bn:.4f}) fine-tuned {tuned:.2f}% "
              f"[{time.perf_counter() - t0:.0f}s]", flush=True)
    tuned = [r["finetuned_test_accuracy"] for r in rows]
    rho_bn = float(spearmanr([r["proxy_adaptive_bn"] for r in rows], tuned).statistic)
    rho_plain = float(spearmanr([r["proxy_no_bn_recalibration"] for r in rows], tuned).statistic)
    md = ("| proxy | Spearman ρ with fine-tuned test accuracy |\n|---|---|\n"
          f"| adaptive BN (default) | {rho_bn:.3f} |\n| no BN recalibration | {rho_plain:.3f} |\n\n"
          f"{cfg.strategies} random strategies at target {cfg.target}; fine-tune: {cfg.finetune_epochs} epoch(s) on "
          f"{cfg.finetune_images} training images; proxy on {cfg.proxy_images} validation images.")
    write_report("proxy_fidelity_resnet20", cfg, {"spearman_adaptive_bn": rho_bn, "spearman_no_bn": rho_plain, "rows": rows}, md)


if __name__ == "__main__":
    run_script(main, Config)
