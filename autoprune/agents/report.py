"""``autoprune report``: join ``evaluate`` reports of several architectures into one view.

Each input is a report directory (``results.json`` from ``autoprune evaluate``); the output is one
table -- a row per (architecture, target), a column per method, fine-tuned accuracy as mean ± std over
the paired seeds -- and one figure with a panel per architecture (accuracy against FLOPs ratio, every
method, error bars). The architecture's name is the report's recorded base model (else its directory).
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
from autoprune.utils import save_figure, write_text_atomic


@dataclass
class Report:
    name: str  # the architecture (or the directory's name)
    path: Path
    rows: list[dict[str, Any]]
    base_accuracy: float | None  # test accuracy of the unpruned model, when recorded


def load_report(directory: str | os.PathLike) -> Report:
    path = Path(directory) / "results.json"
    if not path.is_file():
        raise AutopruneError(f"{directory} holds no results.json: pass directories written by `autoprune evaluate`")
    try:
        payload = json.loads(path.read_text())
        rows = payload["rows"]
    except (ValueError, KeyError, TypeError):
        raise AutopruneError(f"{path} is not an evaluate report (no rows)") from None
    base = payload.get("base") or {}
    return Report(base.get("arch") or Path(directory).name, Path(directory), rows, base.get("test_accuracy"))


def _accuracy(row: dict[str, Any]) -> tuple[float, float | None]:
    """Fine-tuned accuracy (mean, std) where the report fine-tuned, else the accuracy before fine-tuning."""
    if row.get("finetuned_test_accuracy") is not None:
        return row["finetuned_test_accuracy"], row.get("finetuned_test_accuracy_std")
    return row["test_accuracy"], None


def methods_of(reports: Sequence[Report]) -> list[str]:
    order = ["policy", "uniform", "global", "torch_pruning", "amc"]
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
    return "\n".join(lines)


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
