"""Least-squares reconstruction after pruning: accuracy before fine-tuning, its cost, and after a fine-tune.

The strategies are those of a committed comparison report (by default the policy's at 0.3, 0.5 and
0.7), or, with ``--report ""``, those a baseline ``--method`` (e.g. ``global``) finds on the base model
itself, so that a new base model is measured before any policy is searched on it. Each is pruned from the base model and scored on the test split four ways: BN statistics
re-estimated (adaptive BN, what ``evaluate`` reports before fine-tuning); reconstructed on
``images`` training images with the base model's BN statistics; reconstructed, then adaptive BN; and,
with ``finetune_epochs`` > 0, after the shared recipe's fine-tune with and without reconstruction.
The report is rewritten after every target; ``--resume`` keeps the targets it holds (measured with the
same settings) and measures the others.

    python -m experiments.reconstruction --images 256
    python -m experiments.reconstruction --checkpoint checkpoints/resnet56-cifar10.pt --report "" --method global \
        --finetune-epochs 1 --name reconstruction_resnet56_finetuned   # --resume continues it
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.agents.baselines import create_searcher
from autoprune.agents.report import read_report
from autoprune.errors import AutopruneError
from autoprune.recovery import FinetuneRecipe, calibration_batches, finetuned_accuracies
from autoprune.task import PruningSettings, PruningTask
from autoprune.training import evaluate, recalibrate_bn
from autoprune.utils import read_json
from experiments.common import report_row, run_script, save_report


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
    out_dir: str = "docs/results"
    resume: bool = False  # keep the targets an existing report of the same settings holds


SETUP = ("checkpoint", "report", "method", "episodes", "images", "finetune_epochs", "seeds")  # what a row depends on


def measured(path: Path, cfg: Config) -> list[dict[str, Any]]:
    """The rows of an existing report to keep (``--resume``), or one clear error if its settings differ."""
    if not cfg.resume or not path.is_file():
        return []
    old = read_json(path, "earlier reconstruction report")
    differ = [k for k in SETUP if old.get("config", {}).get(k) != asdict(cfg)[k]]
    if differ:
        raise AutopruneError(f"{path} was measured with another {', '.join(differ)}: resume with the same settings, "
                             "or write a new report with another --name")
    return list(old["results"]["rows"])


def main(cfg: Config) -> None:
    torch.set_num_threads(cfg.threads)
    path = Path(cfg.out_dir) / f"{cfg.name}.json"
    results = measured(path, cfg)
    done = {r["target"] for r in results}
    plain = PruningTask.from_checkpoint(cfg.checkpoint, PruningSettings(), data_dir=cfg.data_dir)
    refit = plain.derive(reconstruct=cfg.images)
    splits = plain.splits
    calib = calibration_batches(splits.train)
    rows = read_report(cfg.report)["rows"] if cfg.report else None
    if rows is None:
        create_searcher(cfg.method)  # an unknown method is an error before any work
    base = evaluate(plain.model, splits.test)
    for target in cfg.targets:
        if target in done:
            continue
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
        results.sort(key=lambda r: r["target"])
        save_report(path, cfg, {"rows": results}, markdown(results, cfg), module="experiments.reconstruction")
    print(markdown(results, cfg))


def markdown(results: list[dict[str, Any]], cfg: Config) -> str:
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
    return "\n".join(md)


if __name__ == "__main__":
    run_script(main, Config)
