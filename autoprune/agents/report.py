"""Reading ``evaluate`` reports: paired differences between methods, and ``autoprune report``.

Every method of an ``evaluate`` run is fine-tuned with the same seeds, so two methods at a target are
compared seed by seed (``paired_differences``): the mean difference, its standard error, and a verdict
-- ahead or behind when a two-sided paired t-test at the 5% level rejects "no difference" (the mean is
more than t(0.975, seeds − 1) standard errors from zero: 12.7 with 2 seeds, 4.3 with 3, 2.8 with 5),
else within the noise. Over several targets (``mean_over_targets``) the question is whether a method is
ahead *on average*: the mean of the per-target differences, tested with a Welch t-test that pools the
seeds of every target, which resolves margins that no single target's few seeds can.

``autoprune report`` joins the reports of several architectures into one view. Each input is a report
directory (``results.json``); the output is one table -- a row per (architecture, target), a column per
method, fine-tuned accuracy as mean ± std over the paired seeds, and per architecture the policy against
each baseline over the targets -- and one figure with a panel per architecture (accuracy against FLOPs
ratio, every method, error bars). The architecture's name is the report's recorded base model (else its
directory).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.errors import AutopruneError
from autoprune.utils import read_json, save_figure, write_text_atomic

SIGNIFICANCE = 0.05  # of the two-sided paired t-test behind every verdict


@dataclass(frozen=True)
class PairedDifference:
    """``method`` minus ``other`` at one target, over their paired fine-tune seeds (points)."""

    mean: float
    standard_error: float | None  # None with a single seed
    seeds: int
    dof: float | None = None  # degrees of freedom of the t-test; None: seeds - 1 (one target)

    @property
    def threshold(self) -> float | None:
        """How far from zero the mean must be for the paired t-test to reject "no difference" at 5%."""
        if self.standard_error is None:
            return None
        from scipy.stats import t

        dof = self.seeds - 1 if self.dof is None else self.dof
        return float(t.ppf(1 - SIGNIFICANCE / 2, dof)) * self.standard_error

    @property
    def verdict(self) -> str:
        """``ahead`` / ``behind`` (the paired t-test rejects "no difference"), ``within noise``, or ``one seed``."""
        if self.threshold is None:
            return "one seed"
        if abs(self.mean) > self.threshold:
            return "ahead" if self.mean > 0 else "behind"
        return "within noise"

    def __str__(self) -> str:
        err = "" if self.standard_error is None else f" ± {self.standard_error:.2f}"
        return f"{self.mean:+.2f}{err}"


def mean_and_standard_error(differences: Any) -> tuple[float, float | None]:
    """Mean of paired differences and its standard error (None for a single pair): the one statistic
    every paired comparison of autoprune reports."""
    diff = np.asarray(differences, dtype=float)
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None


def finetuned_runs(row: dict[str, Any] | None) -> np.ndarray:
    """A report row's fine-tuned test accuracies, one per seed (empty when the row is missing or was not
    fine-tuned)."""
    if row is None:
        return np.zeros(0)
    single = row.get("finetuned_test_accuracy")
    return np.asarray(row.get("finetuned_test_accuracies") or ([] if single is None else [single]), dtype=float)


def paired_differences(rows: Sequence[dict[str, Any]], method: str, other: str) -> dict[float, PairedDifference]:
    """``method`` minus ``other`` at every target where both were fine-tuned with the same seeds."""
    by_key = {(r["method"], round(r["target"], 6)): r for r in rows}
    found = {}
    for target in sorted({round(r["target"], 6) for r in rows}):
        mine, theirs = finetuned_runs(by_key.get((method, target))), finetuned_runs(by_key.get((other, target)))
        if len(mine) and len(mine) == len(theirs):
            found[target] = PairedDifference(*mean_and_standard_error(mine - theirs), seeds=len(mine))
    return found


def mean_over_targets(per_target: dict[float, PairedDifference]) -> PairedDifference | None:
    """The mean of the per-target differences (None without a target). The targets' fine-tunes are
    independent, so its standard error is sqrt(sum of the per-target squared errors) / targets, and its
    t-test takes the Welch-Satterthwaite degrees of freedom (with equal errors: the targets' seeds - 1
    summed); no standard error if a target has a single seed."""
    diffs = list(per_target.values())
    if not diffs:
        return None
    mean, seeds = float(np.mean([d.mean for d in diffs])), sum(d.seeds for d in diffs)
    if any(d.standard_error is None for d in diffs):
        return PairedDifference(mean, None, seeds)
    variances = [d.standard_error ** 2 for d in diffs]  # type: ignore[operator]
    total = sum(variances)
    dof = (total ** 2 / sum(v ** 2 / (d.seeds - 1) for v, d in zip(variances, diffs)) if total > 0
           else float(sum(d.seeds - 1 for d in diffs)))
    return PairedDifference(mean, float(np.sqrt(total)) / len(diffs), seeds, dof=dof)


def count_verdicts(per_target: dict[float, PairedDifference]) -> dict[str, Any]:
    """Over the targets of one comparison: how many, at how many ahead / behind / level or better in the
    mean, and the mean paired difference with its standard error and verdict (None without a target)."""
    diffs = list(per_target.values())
    overall = mean_over_targets(per_target)
    return {"targets": len(diffs), "ahead": sum(d.verdict == "ahead" for d in diffs),
            "behind": sum(d.verdict == "behind" for d in diffs), "at_least": sum(d.mean >= 0 for d in diffs),
            "mean_difference": None if overall is None else overall.mean,
            "mean_difference_standard_error": None if overall is None else overall.standard_error,
            "mean_difference_verdict": None if overall is None else overall.verdict}


@dataclass
class Report:
    name: str  # the architecture (or the directory's name)
    path: Path
    rows: list[dict[str, Any]]
    base_accuracy: float | None  # test accuracy of the unpruned model, when recorded


def read_report(location: str | Path) -> dict[str, Any]:
    """An ``autoprune evaluate`` report: ``location`` is its folder or its ``results.json``; a missing,
    damaged or foreign file is one clear error."""
    path = Path(location)
    if path.is_dir() or path.suffix != ".json":
        path = path / "results.json"
    if not path.exists():
        raise AutopruneError(f"{path} does not exist: run `autoprune evaluate --out {path.parent}` first")
    report = read_json(path, "report")
    if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
        raise AutopruneError(f"{path} is not an evaluate report (no rows)")
    return report


def load_report(directory: str | os.PathLike) -> Report:
    payload = read_report(directory)
    base = payload.get("base") or {}
    return Report(base.get("arch") or Path(directory).name, Path(directory), payload["rows"], base.get("test_accuracy"))


def _accuracy(row: dict[str, Any]) -> tuple[float, float | None]:
    """Fine-tuned accuracy (mean, std) where the report fine-tuned, else the accuracy before fine-tuning."""
    if row.get("finetuned_test_accuracy") is not None:
        return row["finetuned_test_accuracy"], row.get("finetuned_test_accuracy_std")
    return row["test_accuracy"], None


def methods_of(reports: Sequence[Report]) -> list[str]:
    order = ["policy", "uniform", "global", "tp-global", "amc"]
    seen = list(dict.fromkeys(r["method"] for rep in reports for r in rep.rows))
    return [m for m in order if m in seen] + [m for m in seen if m not in order]


def markdown(reports: Sequence[Report]) -> str:
    methods = methods_of(reports)
    lines = ["| architecture | base | target | " + " | ".join(methods) + " |", "|" + "---|" * (3 + len(methods))]
    for rep in reports:
        by_key = {(r["method"], round(r["target"], 6)): r for r in rep.rows}
        base = f"{rep.base_accuracy:.2f}" if rep.base_accuracy is not None else "—"
        for target in sorted({round(r["target"], 6) for r in rep.rows}):
            cells = {m: _accuracy(by_key[(m, target)]) for m in methods if (m, target) in by_key}
            best = max(mean for mean, _ in cells.values())
            row = []
            for m in methods:
                if m not in cells:
                    row.append("—")
                    continue
                mean, std = cells[m]
                text = f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}")
                row.append(f"**{text}**" if mean == best and len(cells) > 1 else text)
            lines.append(f"| {rep.name} | {base} | {target:.2f} | " + " | ".join(row) + " |")
        means = {m: np.mean([_accuracy(r)[0] for r in rep.rows if r["method"] == m]) for m in methods
                 if sum(r["method"] == m for r in rep.rows) == len({round(r["target"], 6) for r in rep.rows})}
        if len(means) > 1:
            lines.append(f"| {rep.name} | | mean over targets | " + " | ".join(
                f"{means[m]:.2f}" if m in means else "—" for m in methods) + " |")
    summaries = [line for rep in reports for line in policy_summary(rep)]
    if summaries:
        lines += ["", "The policy against each baseline, paired over the fine-tune seeds (points; ahead or behind: "
                  "a two-sided paired t-test at the 5% level):", "", *summaries]
    return "\n".join(lines)


def policy_summary(report: Report) -> list[str]:
    """One line per baseline: the policy's mean paired difference over the targets both were evaluated
    at, and at how many it is ahead, level or better in the mean, and behind."""
    lines = []
    for other in methods_of([report]):
        if other == "policy":
            continue
        per_target = paired_differences(report.rows, "policy", other)
        c, overall = count_verdicts(per_target), mean_over_targets(per_target)
        if overall is not None:
            lines.append(f"- {report.name}, policy − {other}: {overall} on average over {c['targets']} target(s) "
                         f"({overall.verdict}); paired mean ≥ 0 at {c['at_least']}, ahead at {c['ahead']}, "
                         f"behind at {c['behind']}")
    return lines


def figure(reports: Sequence[Report], path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = methods_of(reports)
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(reports), figsize=(4.2 * len(reports), 3.8), squeeze=False)
    for ax, rep in zip(axes[0], reports):
        for m in methods:
            pts = sorted((r["achieved_flops_ratio"], *_accuracy(r)) for r in rep.rows if r["method"] == m)
            if not pts:
                continue
            x, y, err = zip(*pts)
            errors = [e or 0.0 for e in err]
            ax.errorbar(x, y, yerr=errors if any(errors) else None, marker="o", capsize=3, label=m, color=colors[m])
        if rep.base_accuracy is not None:
            ax.axhline(rep.base_accuracy, color="grey", linestyle=":", linewidth=1, label="unpruned")
        ax.set_title(rep.name)
        ax.set_xlabel("FLOPs ratio (pruned / dense)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def write_cross_report(directories: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> list[Report]:
    """Read every report first (a bad one fails before anything is written), then write
    ``cross_arch.md``, ``cross_arch.json`` and ``cross_arch.png`` to ``out_dir``."""
    if not directories:
        raise AutopruneError("give at least one report directory")
    reports = [load_report(d) for d in directories]
    out = Path(out_dir)
    table = markdown(reports)
    payload = {"reports": [{"name": r.name, "path": str(r.path), "base_accuracy": r.base_accuracy, "rows": r.rows}
                           for r in reports]}
    write_text_atomic(out / "cross_arch.json", json.dumps(payload, indent=2) + "\n")
    write_text_atomic(out / "cross_arch.md", table + "\n")
    figure(reports, out / "cross_arch.png")
    return reports
