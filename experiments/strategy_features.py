"""What does the fine-tune reward in a strategy? (issue #13: why a proxy ranks a target's strategies or not)

Reads the yardstick of ``experiments.fidelity_data`` and, within each target, sets the mean fine-tuned
test accuracy against simple properties of the strategies: the test accuracy before fine-tuning (after
adaptive BN, the quantity the ``bn`` proxy estimates), the parameters kept, the FLOPs ratio, the
smallest and the spread of the keep ratios, and every group's keep ratio. Spearman's ρ of each, per
target. No model is scored; the base model is read only to know the groups and count parameters.

    python -m experiments.strategy_features
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from autoprune.checkpoint import load_model
from autoprune.pruning import count_params
from autoprune.pruning.space import PruningSpace
from experiments.common import run_script, spearman, write_report
from experiments.fidelity_data import read_yardstick, seed_means


@dataclass
class Config:
    data: str = "docs/results/fidelity_resnet20.json"  # written by experiments.fidelity_data
    checkpoint: str = ""  # the base model; "": the data file's
    name: str = "strategy_features_resnet20"  # report name
    out_dir: str = "docs/results"


def main(cfg: Config) -> None:
    torch.set_num_threads(1)
    data = read_yardstick(cfg.data)
    rows = [r for r in data["strategies"] if r.get("finetuned")]
    common, tuned = seed_means(rows, data["seeds"])
    if not rows or not common:
        raise SystemExit(f"{cfg.data}: no fine-tune seed is done for every strategy yet")
    model, payload = load_model(cfg.checkpoint or data["checkpoint"])
    space = PruningSpace(model, torch.zeros(1, *payload["meta"]["input_shape"]))
    dense_params = count_params(model)

    features: dict[str, dict[str, float]] = {}  # feature -> strategy id -> value
    for r in rows:
        keep = np.asarray(r["kept_channels"]) / space.channels
        pruned = space.apply(keep, data["settings"]["criterion"])
        values = {"test accuracy before fine-tuning": r["test_accuracy"],
                  "parameters kept": count_params(pruned) / dense_params,
                  "FLOPs ratio": r["flops_ratio"], "smallest keep ratio": float(keep.min()),
                  "spread of keep ratios (std)": float(keep.std())}
        values.update({f"keep ratio of group {g.index} ({g.root}, {g.channels} ch., {g.flops / space.dense_flops:.0%} "
                       "of FLOPs)": float(k) for g, k in zip(space.groups, keep)})
        for name, value in values.items():
            features.setdefault(name, {})[r["id"]] = float(value)

    targets = [t for t in data["targets"] if any(r["target"] == t for r in rows)]
    table = {name: {f"{t:g}": spearman([values[r["id"]] for r in rows if r["target"] == t],
                                  [tuned[r["id"]] for r in rows if r["target"] == t]) for t in targets}
             for name, values in features.items()}
    counts = {f"{t:g}": sum(r["target"] == t for r in rows) for t in targets}
    results = {"data": cfg.data, "seeds_used": common, "strategies": len(rows), "per_target": counts,
               "spearman": table, "features": features, "finetuned": tuned}
    write_report(cfg.name, cfg, results, markdown(results), out_dir=cfg.out_dir)


def markdown(results: dict[str, Any]) -> str:
    targets = list(results["per_target"])
    lines = [f"Spearman's ρ, within each target, between a strategy's fine-tuned test accuracy (mean over seed(s) "
             f"{', '.join(results['seeds_used'])}) and its properties, over the {results['strategies']} strategies of "
             f"`{results['data']}`. Positive: more of it, better after the fine-tune.", "",
             "| property | " + " | ".join(f"ρ {t} (n={results['per_target'][t]})" for t in targets) + " |",
             "|---|" + "---|" * len(targets)]
    for name, per_target in results["spearman"].items():
        lines.append(f"| {name} | " + " | ".join("–" if per_target[t] is None else f"{per_target[t]:.2f}"
                                                  for t in targets) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main, Config)
