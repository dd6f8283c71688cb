"""Which fine-tune recipe recovers a pruned model best at a short budget?

One pruned ResNet-20 (a strategy from a committed comparison report, by default the policy's at
target 0.3), fine-tuned with each recipe for ``epochs`` epochs and ``seeds`` seeds through
``autoprune.recovery.finetune`` -- the path ``prune``, ``finetune`` and ``evaluate`` share. Rows
are saved as they finish; ``--resume`` keeps them.

    python -m experiments.finetune_recipes --epochs 1 --seeds 2
    python -m experiments.finetune_recipes --epochs 10 --seeds 1 --recipes cosine-0.01 onecycle-0.05 onecycle-0.05-kd
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from autoprune.agents.report import read_report
from autoprune.checkpoint import load_model
from autoprune.data import load_splits
from autoprune.pruning import PruningSpace
from autoprune.recovery import FinetuneRecipe, finetune
from autoprune.training import evaluate
from autoprune.utils import read_json
from experiments.common import report_row, run_script, write_report

# name -> recipe changes from the library default; "kd" distils from the unpruned model
RECIPES = {
    "cosine-0.01": {"schedule": "cosine", "lr": 0.01, "distill": False},  # the recipe evaluate used before
    "cosine-0.05": {"schedule": "cosine", "lr": 0.05, "distill": False},
    "onecycle-0.02": {"schedule": "onecycle", "lr": 0.02, "distill": False},
    "onecycle-0.05": {"schedule": "onecycle", "lr": 0.05, "distill": False},
    "onecycle-0.1": {"schedule": "onecycle", "lr": 0.1, "distill": False},
    "onecycle-0.05-kd": {"schedule": "onecycle", "lr": 0.05, "distill": True},
}


@dataclass
class Config:
    checkpoint: str = "checkpoints/resnet20-cifar10.pt"
    data_dir: str = "../shared/data/cifar10"
    report: str = "docs/results/resnet20-cifar10/results.json"  # where the strategy comes from
    method: str = "policy"
    target: float = 0.3
    epochs: int = 1
    seeds: int = 2
    recipes: list[str] = field(default_factory=lambda: list(RECIPES))
    threads: int = 2
    resume: bool = False
    name: str = ""  # report name; default finetune_recipes_<epochs>ep


def main(cfg: Config) -> None:
    torch.set_num_threads(cfg.threads)
    name = cfg.name or f"finetune_recipes_{cfg.epochs}ep"
    saved = Path("docs/results") / f"{name}.json"
    rows = read_json(saved, "earlier results")["results"]["rows"] if cfg.resume and saved.exists() else []
    row = report_row(read_report(cfg.report)["rows"], cfg.method, cfg.target, cfg.report)
    base, payload = load_model(cfg.checkpoint)
    splits = load_splits(payload["meta"]["dataset"], cfg.data_dir, payload["meta"]["val_size"])
    space = PruningSpace(base, torch.zeros(1, *splits.input_shape))
    strategy = np.asarray(row["kept_channels"]) / space.channels
    done = {(r["recipe"], r["seed"]) for r in rows}
    for recipe_name in cfg.recipes:
        recipe = FinetuneRecipe(epochs=cfg.epochs).replace(**RECIPES[recipe_name])
        for seed in range(cfg.seeds):
            if (recipe_name, seed) in done:
                continue
            pruned = space.apply(strategy)
            t0 = time.perf_counter()
            finetune(pruned, splits, recipe, teacher=base, seed=seed, progress=False, log=lambda line: None)
            rows.append({"recipe": recipe_name, "seed": seed, "test_accuracy": evaluate(pruned, splits.test),
                         "seconds": round(time.perf_counter() - t0, 1), **RECIPES[recipe_name]})
            print(f"{recipe_name:>18} seed {seed}: {rows[-1]['test_accuracy']:.2f}% ({rows[-1]['seconds']:.0f} s)", flush=True)
            write_report(name, cfg, {"strategy_from": f"{cfg.method} at {cfg.target}", "rows": rows}, _table(rows, cfg))


def _table(rows: list[dict], cfg: Config) -> str:
    lines = [f"Fine-tuned test accuracy (%) of one pruned ResNet-20 ({cfg.method}'s strategy at target {cfg.target}), "
             f"{cfg.epochs} epoch(s), mean ± std over seeds", "", "| recipe | test accuracy | seeds | seconds per run |",
             "|---|---|---|---|"]
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        accs = [r["test_accuracy"] for r in rows if r["recipe"] == recipe]
        secs = [r["seconds"] for r in rows if r["recipe"] == recipe]
        std = f" ± {np.std(accs, ddof=1):.2f}" if len(accs) > 1 else ""
        lines.append(f"| {recipe} | {np.mean(accs):.2f}{std} | {len(accs)} | {np.mean(secs):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main, Config)
