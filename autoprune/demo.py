"""``autoprune demo``: the whole story on the embedded digits data, in a few minutes on a laptop CPU.

Train a small base model, search one conditional policy, prune at three targets (one not a round
number), and compare with the uniform strategy under the same fine-tune recipe as the real
comparisons, repeated over paired seeds. The test split has only 359 images (one image is 0.28
points), so the table ends by saying which differences the seeds resolve and which they do not.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from autoprune import models
from autoprune.agents import SearchConfig, search
from autoprune.agents.evaluate import evaluate_methods, markdown_table, paired_verdicts, write_report
from autoprune.checkpoint import save_model
from autoprune.data import load_splits
from autoprune.pruning import count_flops
from autoprune.recovery import FinetuneRecipe
from autoprune.task import PruningSettings, PruningTask
from autoprune.training import TrainConfig, evaluate, fit
from autoprune.utils import check_output_dir, seed_everything

TARGETS = (0.3, 0.45, 0.63)
FINETUNE = FinetuneRecipe(epochs=3)  # the library's recipe, as in the real comparisons
SEEDS = 3  # paired fine-tune seeds per row
# Adaptive BN with top-1 accuracy, not the library's default proxy (reconstruction, kl): on these easy
# images the refit leaves almost every strategy within a few hundredths of kl (0.94-0.99), too flat a
# reward for 300 episodes, and the policy came out 3.6 points behind uniform at 0.3; with adaptive BN
# it is ahead at every target, in half the search time (docs/RESULTS.md)
DEMO_SETTINGS = PruningSettings(proxy="bn", proxy_measure="accuracy")


def run_demo(out_dir: str | Path = "out/demo", seed: int = 0, episodes: int = 300,
             settings: PruningSettings = DEMO_SETTINGS) -> list[dict]:
    out_dir = check_output_dir(out_dir, "demo folder")
    search_config = SearchConfig(episodes=episodes, seed=seed, settings=settings)  # checked before the base model trains
    seed_everything(seed)
    t0 = time.perf_counter()
    splits = load_splits("digits")
    print(f"[1/4] training a small CNN on the embedded digits ({len(splits.train)} train / {len(splits.val)} val / "
          f"{len(splits.test)} test images)")
    model = models.create("smallcnn")
    fit(model, splits, TrainConfig(epochs=8, batch_size=64, lr=0.1, seed=seed), progress=False)
    base_acc = evaluate(model, splits.test)
    base_path = out_dir / "base.pt"
    save_model(base_path, model, "smallcnn", splits.num_classes, {"kind": "base", "dataset": "digits",
               "val_size": splits.val_size, "input_shape": list(splits.input_shape), "test_accuracy": base_acc, "seed": seed})
    print(f"      base test accuracy {base_acc:.2f}%")

    print(f"[2/4] searching one conditional policy for targets in [0.2, 0.9] ({episodes} episodes, DDPG)")
    policy_dir = out_dir / "policy"
    if (policy_dir / "policy.json").exists():
        import shutil

        shutil.rmtree(policy_dir)
    policy = search(policy_dir, search_config, checkpoint=base_path, progress=True)

    print(f"[3/4] pruning at targets {', '.join(map(str, TARGETS))} with the one policy")
    example = torch.zeros(1, *splits.input_shape)
    for target in TARGETS:
        pruned = policy.prune(model, target)
        ratio = count_flops(pruned, example) / count_flops(model, example)
        save_model(out_dir / f"pruned-{target}.pt", pruned, "smallcnn", splits.num_classes,
                   {"kind": "pruned", "dataset": "digits", "target": target, "achieved_flops_ratio": ratio,
                    "input_shape": list(splits.input_shape)})
        print(f"      target {target}: FLOPs ratio {ratio:.3f} -> {out_dir / f'pruned-{target}.pt'}")

    print(f"[4/4] policy vs uniform, the same {FINETUNE.epochs}-epoch fine-tune, {SEEDS} paired seeds each")
    task = PruningTask(model, splits, policy.settings, space=policy.space, scores=policy.scores)
    rows = evaluate_methods(task, TARGETS, policy, ["uniform"], recipe=FINETUNE, finetune_seeds=SEEDS, seed=seed,
                            log=lambda s: None)
    write_report(rows, out_dir / "report", {"demo": True, "seed": seed, "episodes": episodes})
    print()
    print(markdown_table(rows))
    print()
    print("\n".join(paired_verdicts(rows, "policy", "uniform")))
    print(f"\nbase model {base_acc:.2f}% test accuracy; report in {out_dir / 'report'}; done in {time.perf_counter() - t0:.0f}s")
    return rows
