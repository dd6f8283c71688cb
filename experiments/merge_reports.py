"""Merge evaluation reports written by separate ``autoprune evaluate`` runs into one report.

Expensive baselines (AMC: one search per target) can run in a second process beside the policy's
run; this joins their rows. The runs must share the base model and the fine-tune budget, or the
rows would not be comparable, and no (method, target) may appear twice.

``--baselines-from DIR`` takes only the baseline rows (every method but the policy) of an earlier
report: a baseline's strategy does not depend on the policy or its proxy, and with the same base model,
fine-tune budget and seeds its fine-tunes are the same runs, so a new policy is set against them
without fine-tuning them again.

    python -m experiments.merge_reports docs/results/resnet20-cifar10/runs/policy \
        docs/results/resnet20-cifar10/runs/amc --out docs/results/resnet20-cifar10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from autoprune.agents.evaluate import markdown_table, write_report
from autoprune.agents.report import read_report
from autoprune.errors import AutopruneError

# What makes rows comparable across runs: the same base model, data, split and fine-tune budget.
SHARED = ("base_fingerprint", "data", "data_dir", "val_size", "finetune_epochs", "finetune_seeds", "precision", "lr",
          "seed", "criterion")


def merge(reports: list[Path], baselines_from: list[Path] | None = None,
          ) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """The rows of ``reports`` and the baseline rows of ``baselines_from`` (checked comparable, no
    (method, target) twice), the merged config, and the unpruned model's record (architecture, test
    accuracy) that they share."""
    sources = [(d, False) for d in reports] + [(d, True) for d in baselines_from or []]
    loaded = [read_report(d) for d, _ in sources]
    first = loaded[0]["config"]
    for (d, _), report in zip(sources[1:], loaded[1:]):
        differ = [k for k in SHARED if report["config"].get(k) != first.get(k)]
        if differ:
            raise AutopruneError(f"{d} differs from {reports[0]} in {', '.join(differ)}: its rows are not comparable")
    rows, seen = [], set()
    for (d, baselines_only), report in zip(sources, loaded):
        for row in report["rows"]:
            if baselines_only and row["method"] == "policy":
                continue
            key = (row["method"], round(row["target"], 6))
            if key in seen:
                raise AutopruneError(f"{row['method']} at target {row['target']:g} appears in more than one report ({d})")
            seen.add(key)
            rows.append(row)
    rows.sort(key=lambda r: (r["target"], r["method"] != "policy", r["method"]))
    config = {"merged_from": {str(d): r["config"] for d, r in zip(reports, loaded)},
              "baselines_from": {str(d): r["config"] for (d, _), r in zip(sources[len(reports):], loaded[len(reports):])}}
    base = next((r["base"] for r in loaded if r.get("base")), {})  # one base model: checked by its fingerprint
    return rows, config, base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="report directories (each with results.json)")
    parser.add_argument("--baselines-from", type=Path, nargs="*", default=[], metavar="DIR",
                        help="earlier reports whose baseline rows (not their policy's) are taken as they are")
    parser.add_argument("--out", type=Path, required=True, help="directory of the merged report")
    args = parser.parse_args(argv)
    try:
        rows, config, base = merge(args.reports, args.baselines_from)
    except AutopruneError as exc:
        print(f"merge_reports: error: {exc}", file=sys.stderr)
        return 2
    write_report(rows, args.out, config, base)
    print(markdown_table(rows))
    print(f"{len(rows)} rows from {len(args.reports) + len(args.baselines_from)} reports -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
