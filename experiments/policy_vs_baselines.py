"""Policies against every baseline, target by target, with paired seeds: where is a policy ahead by more
than the seed noise? (The bars of the cross-architecture comparison and of the proxy re-run.)

The inputs are ``autoprune evaluate`` reports of one base model under one fine-tune budget (the
settings ``experiments.merge_reports`` checks). ``--reports`` hold the policy and the baselines (e.g.
``runs/policy`` and ``runs/amc``); each ``--policy LABEL=DIR`` adds the policy rows of another report
under LABEL (a second search seed, a transferred policy); ``--baselines-from DIR`` adds the baseline rows
of an earlier report (fine-tuned once, set against a new policy); each ``--reference LABEL=DIR`` adds
another report's policy rows as a baseline (an earlier search set against the new one). Per target: every method's fine-tuned accuracy
(mean ± std over the seeds), then for every policy and baseline the paired difference (mean ± standard
error over the seeds) and its verdict (``autoprune.agents.report.PairedDifference``): ahead or behind
when a two-sided paired t-test at 5% says so, else within the noise. The summary counts, per policy and
baseline, the targets where the policy is ahead or behind, where its paired mean is at least the
baseline's, and the mean paired difference over the targets where both were evaluated, with its
standard error and the verdict of a t-test that pools every target's seeds
(``autoprune.agents.report.mean_over_targets``).

    python -m experiments.policy_vs_baselines --reports docs/results/resnet20-cifar10/runs/policy \
        docs/results/resnet20-cifar10/runs/amc --policy "search seed 1=docs/results/resnet20-cifar10/search-seed1" \
        --name policy_vs_baselines_resnet20
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprune.agents.report import (
    Report,
    count_verdicts,
    mean_over_targets,
    methods_of,
    paired_differences,
    read_report,
)
from autoprune.errors import AutopruneError
from experiments.common import accuracy_table, run_script, write_report
from experiments.merge_reports import SHARED, merge

POLICY = "policy"


@dataclass
class Config:
    reports: list[str] = field(default_factory=lambda: ["docs/results/resnet20-cifar10/runs/policy"])
    policy: list[str] = field(default_factory=list)  # LABEL=DIR: the policy rows of another report, as LABEL
    baselines_from: list[str] = field(default_factory=list)  # earlier reports: their baseline rows
    # LABEL=DIR: the policy rows of another report set in as a baseline, e.g. an earlier search's policy
    reference: list[str] = field(default_factory=list)
    targets: list[float] = field(default_factory=list)  # only these targets (e.g. a bar's); empty: every one
    name: str = "policy_vs_baselines"  # docs/results/<name>.json and .md
    out_dir: str = "docs/results"


def collect(cfg: Config) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of every report (another report's policy rows renamed to their label), the policies first."""
    rows, _, _ = merge([Path(d) for d in cfg.reports], [Path(d) for d in cfg.baselines_from])
    reference = read_report(cfg.reports[0])["config"]
    methods = {r["method"] for r in rows}
    policies = [POLICY] if POLICY in methods else []
    for option, specs in (("--policy", cfg.policy), ("--reference", cfg.reference)):
        for spec in specs:
            label, taken = policy_rows(option, spec, methods, cfg.reports[0], reference)
            rows += taken
            methods.add(label)
            if option == "--policy":
                policies.append(label)
    if not policies:
        raise AutopruneError("no policy rows: give a report of `autoprune evaluate --policy ...` or --policy LABEL=DIR")
    return rows, policies


def policy_rows(option: str, spec: str, methods: set[str], first: str,
                reference: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """``option``'s LABEL=DIR: the policy rows of report DIR renamed to LABEL, once DIR is checked to be
    comparable with the first report (``reference``: its config)."""
    label, sep, directory = spec.partition("=")
    if not sep or not label or not directory:
        raise AutopruneError(f"{option} takes LABEL=DIR, got {spec!r}")
    if label in methods:
        raise AutopruneError(f"{option} label {label!r} is already a method of the reports: pick another")
    report = read_report(directory)
    differ = [k for k in SHARED if report["config"].get(k) != reference.get(k)]
    if differ:
        raise AutopruneError(f"{directory} differs from {first} in {', '.join(differ)}: not comparable")
    taken = [r | {"method": label} for r in report["rows"] if r["method"] == POLICY]
    if not taken:
        raise AutopruneError(f"{Path(directory) / 'results.json'} holds no policy rows: give a report of "
                             "`autoprune evaluate --policy ...`")
    return label, taken


def main(cfg: Config) -> dict[str, Any]:
    rows, policies = collect(cfg)
    if cfg.targets:
        wanted = {round(t, 6) for t in cfg.targets}
        rows = [r for r in rows if round(r["target"], 6) in wanted]
        missing = wanted - {round(r["target"], 6) for r in rows}
        if missing:
            raise AutopruneError(f"no rows at target(s) {', '.join(f'{t:g}' for t in sorted(missing))} in the reports")
    table = {(r["method"], round(r["target"], 6)): r for r in rows}
    baselines = [m for m in methods_of([Report("", Path(), rows, None)]) if m not in policies]
    methods = [*policies, *baselines]
    targets = sorted({t for _, t in table})
    lines, cells = accuracy_table(table, methods, targets, "Fine-tuned test accuracy (%), mean ± std over paired seeds")
    comparisons: dict[str, dict[str, Any]] = {}
    for policy in policies:
        found = {baseline: paired_differences(rows, policy, baseline) for baseline in baselines}
        lines += ["", f"**{policy}** − baseline, paired mean ± standard error (points) and verdict:", "",
                  "| target | " + " | ".join(baselines) + " |", "|" + "---|" * (len(baselines) + 1)]
        for t in targets:
            cells = [f"{found[b][t]} ({found[b][t].verdict})" if t in found[b] else "—" for b in baselines]
            lines.append(f"| {t:.2f} | " + " | ".join(cells) + " |")
        lines.append("")
        comparisons[policy] = {}
        for baseline, per_target in found.items():
            summary = {"per_target": {f"{t:g}": {"mean": d.mean, "standard_error": d.standard_error, "verdict": d.verdict}
                                      for t, d in per_target.items()}, **count_verdicts(per_target)}
            comparisons[policy][baseline] = summary
            n = summary["targets"]
            if n:
                lines.append(f"- vs {baseline}: ahead at {summary['ahead']} of {n} targets, "
                             f"behind at {summary['behind']}; paired mean ≥ {baseline}'s at {summary['at_least']} of "
                             f"{n}; mean difference over those targets {mean_over_targets(per_target)} points "
                             f"({summary['mean_difference_verdict']}, a Welch t-test pooling every target's seeds).")
    results = {"reports": cfg.reports, "policies": policies, "baselines": baselines, "targets": targets,
               "cells": cells,
               "comparisons": comparisons}
    write_report(cfg.name, cfg, results, "\n".join(lines), cfg.out_dir)
    return results


if __name__ == "__main__":
    run_script(main, Config)
