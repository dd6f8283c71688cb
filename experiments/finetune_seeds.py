"""Re-run the fine-tune of an evaluation report's strategies with several seeds.

A report row holds one fine-tune with one seed; a one-epoch fine-tune moves by about half a point
from seed to seed, as much as many gaps between methods. This takes the exact strategies of a
committed report (its ``kept_channels``), prunes the same base model, re-estimates BN and repeats
the report's fine-tune recipe through ``autoprune.recovery`` with seeds ``seed``, ``seed + 1``, ...
(a report written before the recipe was recorded used a cosine schedule from ``lr``; its rows are
re-run with that recipe on the shared recovery path, so seed ``seed`` need not repeat its number
exactly). It reports mean ± standard deviation per row and, per target, each method's
gap to the policy with the standard deviation of the paired per-seed differences.
Resumable: rows already in the output are kept.

    python -m experiments.finetune_seeds --report docs/results/resnet20-cifar10 --targets 0.3 --seeds 3
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoprune.agents.common import fingerprint
from autoprune.agents.report import read_report
from autoprune.checkpoint import load_model
from autoprune.deploy.splits import splits_for_model
from autoprune.pruning import PruningSpace
from autoprune.recovery import FinetuneRecipe, calibration_batches, finetuned_accuracies
from autoprune.training import recalibrate_bn
from autoprune.utils import read_json
from experiments.common import run_script, write_report


@dataclass
class Config:
    report: str = "docs/results/resnet20-cifar10"
    checkpoint: str = "checkpoints/resnet20-cifar10.pt"
    data_dir: str = "../shared/data/cifar10"
    targets: str = ""  # comma-separated; empty: every target of the report
    methods: str = ""  # comma-separated; empty: every method
    seeds: int = 3
    criterion: str = "l1"
    name: str = "finetune_seeds_resnet20"
    threads: int = 1


def report_settings(report: dict) -> dict:
    """The evaluation settings of a report (of its first part, for a merged one)."""
    config = report["config"]
    return next(iter(config["merged_from"].values())) if "merged_from" in config else config


def report_recipe(settings: dict) -> FinetuneRecipe:
    """The fine-tune recipe a report's rows were fine-tuned with."""
    if settings.get("recipe"):
        return FinetuneRecipe(**settings["recipe"])
    return FinetuneRecipe(epochs=settings["finetune_epochs"], lr=settings["lr"], schedule="cosine", distill=False,
                          precision=settings.get("precision") or "fp32")


def markdown(rows: list[dict], seeds: int) -> str:
    lines = [f"| method | target | report (1 seed) | mean ± std over {seeds} seeds | per seed | gap to policy (paired) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        policy = next((p for p in rows if p["method"] == "policy" and p["target"] == r["target"]), None)
        gap = "—"
        if policy is not None and r["method"] != "policy":
            diff = np.subtract(r["finetuned_test_accuracies"], policy["finetuned_test_accuracies"])
            gap = f"{diff.mean():+.2f} ± {diff.std(ddof=1):.2f}"
        runs = " / ".join(f"{a:.2f}" for a in r["finetuned_test_accuracies"])
        lines.append(f"| {r['method']} | {r['target']:.2f} | {r['report_finetuned']:.2f} | "
                     f"{r['finetuned_test_accuracy']:.2f} ± {r['finetuned_test_accuracy_std']:.2f} | {runs} | {gap} |")
    return "\n".join(lines)


def main(cfg: Config) -> None:
    torch.set_num_threads(cfg.threads)
    report = read_report(cfg.report)
    settings = report_settings(report)
    model, payload = load_model(cfg.checkpoint)
    if fingerprint(model) != settings["base_fingerprint"]:
        raise SystemExit(f"{cfg.checkpoint} is not the base model of {cfg.report}; pass --checkpoint")
    splits = splits_for_model(payload, settings.get("data"), cfg.data_dir, settings.get("val_size"))
    space = PruningSpace(model, torch.zeros(1, *splits.input_shape))
    calib = calibration_batches(splits.train, seed=settings["seed"])
    recipe = report_recipe(settings)
    targets = {round(float(t), 6) for t in cfg.targets.split(",") if t}
    methods = {m for m in cfg.methods.split(",") if m}
    wanted = [r for r in report["rows"] if (not targets or round(r["target"], 6) in targets)
              and (not methods or r["method"] in methods)]
    out = Path("docs/results") / f"{cfg.name}.json"
    done = read_json(out, "earlier results")["results"]["rows"] if out.exists() else []
    rows = [r for r in done if r.get("seeds") == cfg.seeds]
    seeds = range(settings["seed"], settings["seed"] + cfg.seeds)
    for source in wanted:
        if any(r["method"] == source["method"] and r["target"] == source["target"] for r in rows):
            continue
        strategy = np.asarray(source["kept_channels"]) / space.channels
        pruned = space.apply(strategy, cfg.criterion)
        recalibrate_bn(pruned, calib)
        row = {"method": source["method"], "target": source["target"], "seeds": cfg.seeds,
               "kept_channels": source["kept_channels"], "report_finetuned": source["finetuned_test_accuracy"],
               **finetuned_accuracies(pruned, splits, recipe, seeds, teacher=model)}
        rows.append(row)
        rows.sort(key=lambda r: (r["target"], r["method"] != "policy", r["method"]))
        print(f"{row['method']:>8} {row['target']:.2f}: {row['finetuned_test_accuracies']}", flush=True)
        write_report(cfg.name, cfg, {"report": cfg.report, "rows": rows}, markdown(rows, cfg.seeds))


if __name__ == "__main__":
    run_script(main, Config)
