"""Least-squares reconstruction after pruning: accuracy before fine-tuning, its cost, and after a fine-tune.

The strategies are those of a committed comparison report (by default the policy's at 0.3, 0.5 and
0.7), or, with ``--report ""``, those a baseline ``--method`` (e.g. ``global``) finds on the base model
itself, so that a new base model is measured before any policy is searched on it. Each is pruned from the base model and scored on the test split four ways: BN statistics
re-estimated (adaptive BN, what ``evaluate`` reports before fine-tuning); reconstructed on
``images`` training images with the base model's BN statistics; reconstructed, then adaptive BN; and,
with ``finetune_epochs`` > 0, after the shared recipe's fine-tune with and without reconstruction.

    python -m experiments.reconstruction --images 256
    python -m experiments.reconstruction --checkpoint checkpoints/resnet56-cifar10.pt --report "" --method global \
        --finetune-epochs 1 --name reconstruction_resnet56
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from autoprune.agents.baselines import create_searcher
from autoprune.agents.report import read_report
from autoprune.recovery import FinetuneRecipe, calibration_batches, finetuned_accuracies
from autoprune.task import PruningSettings, PruningTask
from autoprune.training import evaluate, recalibrate_bn
from experiments.common import report_row, run_script, write_report


@dataclass
class Config:
    checkpoint: str = "checkpoints/resnet20-cifar10.pt"
    data_dir: str = "../shared/data/cifar10"
    report: str = "docs/results/resnet20-cifar10/results.json"  # "": strategies of the baseline --method
    method: str = "policy"  # a report's method, or with --report "" a baseline (see `autoprune methods`)
    episodes: int = 100  # proxy evaluations of a searching baseline method (with --report "")
    targets: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])
    images: int = 256  # calibration images for the least-squares fits
    finetune_epochs: int = 0  # > 0: also the accuracy after the shared recipe's fine-tune, with and without
    seeds: int = 2
    threads: int = 2
    name: str = "reconstruction_resnet20"


def main(cfg: Config) -> None:
    torch.set_num_threads(cfg.threads)
    plain = PruningTask.from_checkpoint(cfg.checkpoint, PruningSettings(), data_dir=cfg.data_dir)
    refit = plain.derive(reconstruct=cfg.images)
    splits = plain.splits
    calib = calibration_batches(splits.train)
    rows = read_report(cfg.report)["rows"] if cfg.report else None
    if rows is None:
        create_searcher(cfg.method)  # an unknown method is an error before any work
    base = evaluate(plain.model, splits.test)
    results = []
    for target in cfg.targets:
        if rows is None:
            strategy = create_searcher(cfg.method).search(plain, target, cfg.episodes, 0).strategy
        else:
            row = report_row(rows, cfg.method, target, cfg.report)
            strategy = np.asarray(row["kept_channels"]) / plain.space.channels
        adaptive = plain.apply(strategy)
        recalibrate_bn(adaptive, calib)
        t0 = time.perf_counter()
        rebuilt = refit.apply(strategy)
        seconds = time.perf_counter() - t0
        rebuilt_acc = evaluate(rebuilt, splits.test)
        rebuilt_bn = refit.apply(strategy)
        recalibrate_bn(rebuilt_bn, calib)
        out = {"target": target, "flops_ratio": plain.space.flops_ratio(strategy), "base": base,
               "adaptive_bn": evaluate(adaptive, splits.test), "reconstructed": rebuilt_acc,
               "reconstructed_adaptive_bn": evaluate(rebuilt_bn, splits.test), "reconstruct_seconds": seconds,
               "layers_refitted": len(rebuilt.autoprune_reconstruction.layers)}
        if cfg.finetune_epochs > 0:
            recipe, seeds = FinetuneRecipe(epochs=cfg.finetune_epochs), range(cfg.seeds)
            out["finetuned"] = finetuned_accuracies(adaptive, splits, recipe, seeds, teacher=plain.model)
            out["finetuned_reconstructed"] = finetuned_accuracies(rebuilt, splits, recipe, seeds, teacher=plain.model)
        results.append(out)
        print(out, flush=True)
    source = f"from `{cfg.report}`" if cfg.report else "found on the base model"
    md = [f"{cfg.method}'s strategies {source}; test accuracy (%) before fine-tuning; reconstruction on "
          f"{cfg.images} training images", "",
          "| target | FLOPs ratio | base | adaptive BN | reconstructed | reconstructed + adaptive BN | lost (adaptive BN → best reconstructed) | seconds |",
          "|---|---|---|---|---|---|---|---|"]
    for r in results:
        best = max(r["reconstructed"], r["reconstructed_adaptive_bn"])
        md.append(f"| {r['target']:.2f} | {r['flops_ratio']:.3f} | {r['base']:.2f} | {r['adaptive_bn']:.2f} | "
                  f"{r['reconstructed']:.2f} | {r['reconstructed_adaptive_bn']:.2f} | "
                  f"{r['base'] - r['adaptive_bn']:.2f} → {r['base'] - best:.2f} | {r['reconstruct_seconds']:.1f} |")
    if cfg.finetune_epochs > 0:
        md += ["", f"After the shared recipe's {cfg.finetune_epochs}-epoch fine-tune ({cfg.seeds} seeds):", "",
               "| target | without | with reconstruction |", "|---|---|---|"]
        for r in results:
            a, b = r["finetuned"], r["finetuned_reconstructed"]
            md.append(f"| {r['target']:.2f} | {a['finetuned_test_accuracy']:.2f} ± {a['finetuned_test_accuracy_std'] or 0:.2f} | "
                      f"{b['finetuned_test_accuracy']:.2f} ± {b['finetuned_test_accuracy_std'] or 0:.2f} |")
    write_report(cfg.name, cfg, {"rows": results}, "\n".join(md))


if __name__ == "__main__":
    run_script(main, Config)
