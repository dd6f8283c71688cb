"""Policies against every baseline, target by target, with paired seeds: where is a policy ahead by more
than the seed noise? (The bars of the cross-architecture comparison and of the proxy re-run.)

The inputs are ``autoprune evaluate`` reports of one base model under one fine-tune budget (the
settings ``experiments.merge_reports`` checks). ``--reports`` hold the policy and the baselines (e.g.
``runs/policy`` and ``runs/amc``); each ``--policy LABEL=DIR`` adds the policy rows of another report
under LABEL (a second search seed, a transferred policy). Per target: every method's fine-tuned accuracy
(mean ± std over the seeds), then for every policy and baseline the paired difference (mean ± standard
error over the seeds) and its verdict: ahead or behind when the mean is more than two standard errors
from zero, else within the noise. The summary counts, per policy and baseline, the targets where the
policy is ahead beyond the noise, where its paired mean is at least the baseline's, and the difference
of the means over all targets.

    python -m experiments.policy_vs_baselines --reports docs/results/resnet20-cifar10/runs/policy \
        docs/results/resnet20-cifar10/runs/amc --policy "search seed 1=docs/results/resnet20-cifar10/search-seed1" \
        --name policy_vs_baselines_resnet20
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.agents.evaluate import mean_and_standard_error
from autoprune.errors import AutopruneError
from experiments.common import finetuned_runs, mean_std_cell, run_script, write_report
from experiments.merge_reports import SHARED, merge

POLICY = "policy"


@dataclass
class Config:
    reports: list[str] = field(default_factory=lambda: ["docs/results/resnet20-cifar10/runs/policy"])
    policy: list[str] = field(default_factory=list)  # LABEL=DIR: the policy rows of another report, as LABEL
    name: str = "policy_vs_baselines"  # docs/results/<name>.json and .md
    out_dir: str = "docs/results"


def verdict(mean: float, err: float | None) -> str:
    if err is None:
        return "one seed"
    if abs(mean) > 2 * err:
        return "ahead" if mean > 0 else "behind"
    return "within noise"


def collect(cfg: Config) -> tuple[dict[tuple[str, float], dict[str, Any]], list[str]]:
    """Rows by (method, target), the policies' labels first."""
    rows, _ = merge([Path(d) for d in cfg.reports])
    reference = json.loads((Path(cfg.reports[0]) / "results.json").read_text())["config"]
    table = {(r["method"], round(r["target"], 6)): r for r in rows}
    policies = [POLICY] if any(m == POLICY for m, _ in table) else []
    for spec in cfg.policy:
        label, sep, directory = spec.partition("=")
        if not sep or not label or not directory:
            raise AutopruneError(f"--policy takes LABEL=DIR, got {spec!r}")
        if label in {m for m, _ in table}:
            raise AutopruneError(f"--policy label {label!r} is already a method of the reports: pick another")
        path = Path(directory) / "results.json"
        if not path.is_file():
            raise AutopruneError(f"{path} does not exist: run `autoprune evaluate --out {directory}` first")
        report = json.loads(path.read_text())
        differ = [k for k in SHARED if report["config"].get(k) != reference.get(k)]
        if differ:
            raise AutopruneError(f"{directory} differs from {cfg.reports[0]} in {', '.join(differ)}: not comparable")
        table |= {(label, round(r["target"], 6)): r for r in report["rows"] if r["method"] == POLICY}
        policies.append(label)
    if not policies:
        raise AutopruneError("no policy rows: give a report of `autoprune evaluate --policy ...` or --policy LABEL=DIR")
    return table, policies


def main(cfg: Config) -> dict[str, Any]:
    table, policies = collect(cfg)
    methods = [*policies, *sorted({m for m, _ in table} - set(policies))]
    baselines = methods[len(policies):]
    targets = sorted({t for _, t in table})
    lines = ["Fine-tuned test accuracy (%), mean ± std over paired seeds", "",
             "| target | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
    for t in targets:
        lines.append(f"| {t:.2f} | " + " | ".join(mean_std_cell(finetuned_runs(table.get((m, t)))) for m in methods) + " |")
    comparisons: dict[str, dict[str, Any]] = {}
    for policy in policies:
        lines += ["", f"**{policy}** − baseline, paired mean ± standard error (points) and verdict:", "",
                  "| target | " + " | ".join(baselines) + " |", "|" + "---|" * (len(baselines) + 1)]
        per_baseline: dict[str, Any] = {}
        for baseline in baselines:
            per_target = {}
            for t in targets:
                mine, theirs = finetuned_runs(table.get((policy, t))), finetuned_runs(table.get((baseline, t)))
                if len(mine) and len(mine) == len(theirs):
                    mean, err = mean_and_standard_error(mine - theirs)
                    per_target[f"{t:g}"] = {"mean": mean, "standard_error": err, "verdict": verdict(mean, err)}
            per_baseline[baseline] = {
                "per_target": per_target, "targets": len(per_target),
                "ahead": sum(v["verdict"] == "ahead" for v in per_target.values()),
                "behind": sum(v["verdict"] == "behind" for v in per_target.values()),
                "at_least": sum(v["mean"] >= 0 for v in per_target.values()),
                "mean_difference": float(np.mean([v["mean"] for v in per_target.values()])) if per_target else None}
        for t in targets:
            cells = []
            for baseline in baselines:
                d = per_baseline[baseline]["per_target"].get(f"{t:g}")
                cells.append("—" if d is None else f"{d['mean']:+.2f}" + (
                    f" ± {d['standard_error']:.2f}" if d["standard_error"] is not None else "") + f" ({d['verdict']})")
            lines.append(f"| {t:.2f} | " + " | ".join(cells) + " |")
        lines.append("")
        for baseline, s in per_baseline.items():
            if s["targets"]:
                lines.append(f"- vs {baseline}: ahead beyond the noise at {s['ahead']} of {s['targets']} targets, behind at "
                             f"{s['behind']}; paired mean ≥ {baseline}'s at {s['at_least']} of {s['targets']}; mean "
                             f"difference over those targets {s['mean_difference']:+.2f} points.")
        comparisons[policy] = per_baseline
    results = {"reports": cfg.reports, "policies": policies, "baselines": baselines, "targets": targets,
               "cells": {f"{m}@{t:g}": finetuned_runs(table.get((m, t))).tolist() for m in methods for t in targets},
               "comparisons": comparisons}
    write_report(cfg.name, cfg, results, "\n".join(lines), cfg.out_dir)
    return results


if __name__ == "__main__":
    run_script(main, Config)
