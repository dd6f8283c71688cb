"""Which proxy ranks the evaluated strategies the way the fine-tune does?

Takes the rows of an evaluation report (every method's strategy at every target, with its test
accuracy after the fine-tune) and scores each strategy with the adaptive-BN proxy alone and after a
few SGD steps on training batches (``AccuracyProxy(finetune_steps=...)``). Reports Spearman's rank
correlation with the fine-tuned test accuracy within each target (the ranking a search must get
right) and how often each proxy picks the best method per target.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr

from autoprune.agents.report import read_report
from autoprune.task import AccuracyProxy
from experiments.common import ProxyTaskConfig, checkpoint_task, run_script, write_report


@dataclass
class Config(ProxyTaskConfig):
    report: str = "docs/results/resnet20-cifar10"
    steps: str = "0,50,200"  # SGD steps before scoring; 0 = adaptive BN only
    name: str = "proxy_ranking_resnet20"


def main(cfg: Config) -> None:
    torch.set_num_threads(cfg.threads)
    rows = read_report(cfg.report)["rows"]
    task = checkpoint_task(cfg)
    steps = [int(s) for s in cfg.steps.split(",")]
    proxies = {n: AccuracyProxy(task.splits, cfg.proxy_images, finetune_steps=n) for n in steps}
    for row in rows:
        t0 = time.perf_counter()
        # exact channel counts where the report has them: ratios rounded to 4 places can round a count differently
        strategy = (np.asarray(row["kept_channels"]) / task.space.channels if "kept_channels" in row
                    else np.asarray(row["strategy"]))
        row["proxies"] = {str(n): p.score(task.apply(strategy)) for n, p in proxies.items()}
        print(f"{row['method']:>8} {row['target']:.2f}: " + "  ".join(f"{n} steps {v:.3f}" for n, v in row["proxies"].items())
              + f"  fine-tuned {row['finetuned_test_accuracy']:.2f}%  [{time.perf_counter() - t0:.0f}s]", flush=True)

    targets = sorted({r["target"] for r in rows})
    summary = {}
    for n in map(str, steps):
        rhos, hits = [], 0
        for t in targets:
            group = [r for r in rows if r["target"] == t]
            tuned = [r["finetuned_test_accuracy"] for r in group]
            scores = [r["proxies"][n] for r in group]
            if len(group) > 2:
                rhos.append(float(spearmanr(scores, tuned).statistic))
            hits += int(np.argmax(scores) == np.argmax(tuned))
        summary[n] = {"mean_spearman_within_target": float(np.mean(rhos)) if rhos else None,
                      "best_method_found": hits, "targets": len(targets)}
    lines = ["| proxy | mean Spearman ρ within a target | picks the best method |", "|---|---|---|"]
    for n, s in summary.items():
        label = "adaptive BN" if n == "0" else f"adaptive BN + {n} SGD steps"
        rho = "—" if s["mean_spearman_within_target"] is None else f"{s['mean_spearman_within_target']:.2f}"
        lines.append(f"| {label} | {rho} | {s['best_method_found']} of {s['targets']} targets |")
    head = ["| method | target | fine-tuned | " + " | ".join(f"proxy ({n} steps)" for n in map(str, steps)) + " |",
            "|---|---|---|" + "---|" * len(steps)]
    for r in rows:
        head.append(f"| {r['method']} | {r['target']:.2f} | {r['finetuned_test_accuracy']:.2f} | "
                    + " | ".join(f"{r['proxies'][n]:.3f}" for n in map(str, steps)) + " |")
    md = ("\n".join(lines) + f"\n\nStrategies: the rows of `{cfg.report}`; proxy on {cfg.proxy_images} validation images; "
          "SGD steps on batches of 64 augmented training images at lr 0.01 after BN recalibration.\n\n" + "\n".join(head))
    write_report(cfg.name, cfg, {"summary": summary, "rows": rows}, md)


if __name__ == "__main__":
    run_script(main, Config)
