"""Policies on a model they were not searched on (issue #15): transferred and adapted policies against
the architecture's own policy, global ranking and uniform.

The inputs are ``autoprune evaluate`` reports of one base model under one fine-tune budget:
``--own`` holds the model's own policy and the baselines (``cross_arch.sh``'s ``runs/policy``), each
``--other LABEL=DIR`` the rows of another policy on the same model (``evaluate --policy P --transfer``,
or a policy adapted with ``search --init-policy``). The table has a column per policy and baseline and a
row per target (fine-tuned accuracy, mean ± std over the paired seeds), then per other policy: the
paired difference to uniform at every target, its five-target mean against the own policy's, and its
search time (the adaptation's own episodes for an adapted policy) against the own policy's.

    python -m experiments.transfer_report --own docs/results/resnet56-cifar10/runs/policy \
        --other zero-shot-resnet20=docs/results/transfer/resnet20-to-resnet56 \
        --other adapted-50=docs/results/transfer/resnet56-adapted --name transfer_resnet56
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.agents.evaluate import policy_search_seconds
from autoprune.agents.report import finetuned_runs, paired_differences, read_report
from autoprune.errors import AutopruneError
from experiments.common import accuracy_table, run_script, write_report
from experiments.merge_reports import SHARED

BASELINES = ("global", "uniform", "tp-global")


@dataclass
class Config:
    own: str = "docs/results/resnet56-cifar10/runs/policy"  # evaluate report: the model's own policy and baselines
    other: list[str] = field(default_factory=list)  # LABEL=DIR: evaluate reports of other policies on the model
    name: str = "transfer"  # docs/results/<name>.json and .md
    out_dir: str = "docs/results"


def load(directory: str) -> dict[str, Any]:
    path = Path(directory) / "results.json"
    report = read_report(directory)
    if "merged_from" in report.get("config", {}):
        raise AutopruneError(f"{path}: give a report written by one `autoprune evaluate` run, not a merged one")
    return report


def main(cfg: Config) -> dict[str, Any]:
    own = load(cfg.own)
    others: dict[str, dict[str, Any]] = {}
    for spec in cfg.other:
        label, sep, directory = spec.partition("=")
        if not sep or not label or not directory:
            raise AutopruneError(f"--other takes LABEL=DIR, got {spec!r}")
        others[label] = load(directory)
        differ = [k for k in SHARED if others[label]["config"].get(k) != own["config"].get(k)]
        if differ:
            raise AutopruneError(f"{directory} differs from {cfg.own} in {', '.join(differ)}: not comparable")
    table = {("policy (own)", round(r["target"], 6)): r for r in own["rows"] if r["method"] == "policy"}
    table |= {(r["method"], round(r["target"], 6)): r for r in own["rows"] if r["method"] in BASELINES}
    for label, report in others.items():
        table |= {(label, round(r["target"], 6)): r for r in report["rows"] if r["method"] == "policy"}
    columns = ["policy (own)", *others, *[b for b in BASELINES if any(k[0] == b for k in table)]]
    targets = sorted({t for _, t in table})
    arch = own.get("base", {}).get("arch") or Path(cfg.own).name
    lines, cells = accuracy_table(table, columns, targets, f"Fine-tuned test accuracy (%) on {arch}, mean ± std over paired seeds")
    own_mean = float(np.mean([finetuned_runs(table.get(("policy (own)", t))).mean() for t in targets]))
    own_seconds = policy_search_seconds(own["rows"])
    verdicts: dict[str, Any] = {}
    labelled = [r | {"method": m} for (m, _), r in table.items()]
    lines.append("")
    for label, report in others.items():
        found = paired_differences(labelled, label, "uniform")
        per_target = {t: (d.mean, d.standard_error) for t, d in found.items()}
        means = [m.mean() for m in (finetuned_runs(table.get((label, t))) for t in targets) if len(m)]
        mean = float(np.mean(means)) if len(means) == len(targets) else None
        seconds = policy_search_seconds(report["rows"])
        verdicts[label] = {"minus_uniform": per_target, "five_target_mean": mean, "own_mean": own_mean,
                           "at_least_uniform_everywhere": bool(per_target) and all(d >= 0 for d, _ in per_target.values()),
                           "search_seconds": seconds, "own_search_seconds": own_seconds}
        diffs = ", ".join(f"{t:.2f}: {d}" for t, d in found.items())
        lines.append(f"- **{label}** − uniform (paired mean ± standard error): {diffs or '—'}; "
                     f"at least uniform at every target: {'yes' if verdicts[label]['at_least_uniform_everywhere'] else 'no'}.")
        if mean is not None:
            lines.append(f"  Mean over the {len(targets)} targets {mean:.2f} against the own policy's {own_mean:.2f} "
                         f"({mean - own_mean:+.2f} points). Search time {seconds:.0f} s against the own policy's "
                         f"{own_seconds:.0f} s ({seconds / max(own_seconds, 1e-9):.2f}x; a zero-shot policy's time is "
                         "its search on the other model).")
    results = {"arch": arch, "columns": columns, "targets": targets,
               "cells": cells,
               "verdicts": verdicts}
    write_report(cfg.name, cfg, results, "\n".join(lines), cfg.out_dir)
    return results


if __name__ == "__main__":
    run_script(main, Config)
