"""Shared by the experiment scripts: parse a dataclass config from the command line, write reports."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

from autoprune.utils import versions, write_text_atomic

C = TypeVar("C")


def parse_config(cls: type[C]) -> C:
    """``--field value`` for every dataclass field (bool fields take true/false)."""
    parser = argparse.ArgumentParser(description=cls.__doc__)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = f.type if isinstance(f.type, type) else eval(f.type)  # noqa: S307 -- our own annotations
        if kind is bool:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default)
        elif kind in (int, float, str):
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", default=f.default)
    return cls(**vars(parser.parse_args()))


def write_report(name: str, config: Any, results: dict[str, Any], markdown: str, out_dir: str = "docs/results") -> None:
    """Write ``<out_dir>/<name>.json`` (config, versions, command, results) and ``<name>.md``."""
    module = f"experiments.{Path(sys.argv[0]).stem}"
    payload = {
        "command": " ".join(["python", "-m", module] + [shlex.quote(a) for a in sys.argv[1:]]),
        "config": dataclasses.asdict(config),
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "results": results,
    }
    out = Path(out_dir)
    write_text_atomic(out / f"{name}.json", json.dumps(payload, indent=2) + "\n")
    write_text_atomic(out / f"{name}.md", f"<!-- command: {payload['command']} -->\n{markdown}\n")
    print(markdown)


SHAPES = ("uniform", "early", "late")


def shaped_strategy(space: Any, shape: str, target: float, fill: bool = True) -> Any:
    """A strategy within ``target`` whose pruning is spread in a given *shape*:

    - ``uniform``: one keep ratio for all groups (the largest within the target);
    - ``early`` / ``late``: groups on larger feature maps pruned harder (early) or softer (late), in
      proportion to the feature-map side.

    With ``fill`` the budget fill (``PruningSpace.fill``) then spends what is left of the target.
    """
    import numpy as np

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if shape == "uniform":
        strategy = space.keep_counts(space.uniform(target)) / space.channels
    else:
        if not fill:
            raise ValueError("the early/late shapes need the budget fill to meet the target")
        side = np.array([g.feature_size for g in space.groups], dtype=float)
        weight = side / side.max() if shape == "early" else side.min() / side
        floor = 1.0 / space.channels

        def shaped(a: float) -> np.ndarray:  # pruned fraction a * weight per group
            return np.clip(1.0 - a * weight, floor, 1.0)

        lo, hi = 0.0, 1.0 / weight.min()  # hi prunes every group to its floor
        for _ in range(40):  # the smallest a within the target; the fill then spends the rest
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if space.flops_ratio(shaped(mid)) <= target else (mid, hi)
        strategy = shaped(hi)
    return space.fill(strategy, target) if fill else strategy


def bench_in_fresh_processes(models: list[Any], baseline: Any, batches: str, repeats: int, threads: int, runs: int = 3,
                             fold_bn: bool = False) -> list[dict[str, Any]]:
    """``autoprune bench`` run ``runs`` times, each in a new process (a process that has just trained
    times differently from a fresh one); per row the median latency and speedup over the runs, with
    every run's speedup kept under ``speedup_runs``."""
    import statistics
    import subprocess
    import tempfile

    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "bench.json"
            cmd = [sys.executable, "-m", "autoprune.cli", "bench", *map(str, models), "--baseline", str(baseline),
                   "--batch", batches, "--repeats", str(repeats), "--threads", str(threads), "--json", str(report)]
            if fold_bn:
                cmd += ["--fold-bn", "--runtimes", "torch"]
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            results.append(json.loads(report.read_text())["rows"])
    merged = []
    for cells in zip(*results):
        row = dict(cells[0])
        row["latency_ms"] = statistics.median(c["latency_ms"] for c in cells)
        row["latency_ms_min"] = min(c["latency_ms_min"] for c in cells)
        row["throughput"] = row["batch"] / row["latency_ms"] * 1000
        speedups = [c["speedup"] for c in cells]
        row["speedup"] = statistics.median(speedups) if None not in speedups else None
        row["speedup_runs"] = speedups
        merged.append(row)
    return merged
