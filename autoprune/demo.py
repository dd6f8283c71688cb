"""``autoprune demo``: the whole story on the embedded digits data, in a few minutes on a laptop CPU."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from autoprune import models
from autoprune.checkpoint import save_model
from autoprune.data import BatchLoader, load_splits
from autoprune.pruning import PruningSpace, count_flops, count_params
from autoprune.training import TrainConfig, evaluate, fit, recalibrate_bn
from autoprune.utils import seed_everything


def run_demo(out_dir: str | Path = "out/demo", seed: int = 0) -> list[dict]:
    out_dir = Path(out_dir)
    seed_everything(seed)
    t0 = time.perf_counter()
    splits = load_splits("digits")
    print(f"[1/2] training a small CNN on the embedded digits ({len(splits.train)} train / {len(splits.val)} val / "
          f"{len(splits.test)} test images)")
    model = models.create("smallcnn")
    fit(model, splits, TrainConfig(epochs=8, batch_size=64, lr=0.1, seed=seed), progress=False)
    base_acc = evaluate(model, splits.test)
    save_model(out_dir / "base.pt", model, "smallcnn", splits.num_classes, {"kind": "base", "dataset": "digits",
               "val_size": splits.val_size, "input_shape": list(splits.input_shape), "test_accuracy": base_acc, "seed": seed})
    example = torch.zeros(1, *splits.input_shape)
    space = PruningSpace(model, example)
    print("[2/2] pruning at three targets (uniform keep ratio, l1 criterion, BN recalibration)")
    rows = [{"target": 1.0, "achieved_flops_ratio": 1.0, "params": count_params(model), "test_accuracy": base_acc}]
    calib = BatchLoader(splits.train, 64, shuffle=True, seed=seed, max_batches=8)
    for target in (0.7, 0.5, 0.3):
        strategy = space.uniform(target)
        pruned = space.apply(strategy, "l1")
        recalibrate_bn(pruned, (x for x, _ in calib))
        rows.append({"target": target, "achieved_flops_ratio": count_flops(pruned, example) / space.dense_flops,
                     "params": count_params(pruned), "test_accuracy": evaluate(pruned, splits.test),
                     "strategy": np.round(strategy, 3).tolist()})
    print(f"\n{'target':>7} {'FLOPs ratio':>12} {'params':>8} {'test acc':>9}")
    for r in rows:
        print(f"{r['target']:>7.2f} {r['achieved_flops_ratio']:>12.3f} {r['params']:>8d} {r['test_accuracy']:>8.2f}%")
    print(f"\ndone in {time.perf_counter() - t0:.0f}s; base model in {out_dir / 'base.pt'}")
    return rows
