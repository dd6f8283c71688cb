"""Shared by the experiment scripts: the pruning task of a saved model, pruning shapes, reports.

Each script parses its ``Config`` dataclass from the command line with ``tyro.cli`` (``--field-name value``;
booleans as ``--flag`` / ``--no-flag``)."""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import tyro

from autoprune.errors import AutopruneError
from autoprune.utils import versions, write_text_atomic

if TYPE_CHECKING:
    from autoprune.data import DataSplits
    from autoprune.task import PruningSettings, PruningTask


@dataclasses.dataclass
class TaskConfig:
    """The fields of an experiment that scores strategies of a saved model."""

    checkpoint: str = "checkpoints/resnet20-cifar10.pt"
    data_dir: str = "../shared/data/cifar10"  # data folder when the checkpoint's data set needs one
    proxy_images: int = 1000  # validation images the accuracy proxy scores a strategy on
    threads: int = 1  # CPU threads for torch


@dataclasses.dataclass
class ProxyTaskConfig(TaskConfig):
    """``TaskConfig`` for an experiment that scores strategies with one proxy, recorded in its report."""

    # the proxy these benchmarks were measured with (adaptive BN, top-1): the library's default until
    # the fidelity benchmark chose recon with kl; pass --proxy recon --proxy-measure kl for today's
    proxy: str = "bn"
    proxy_measure: str = "accuracy"

    def settings(self) -> PruningSettings:
        """The library's settings with this experiment's proxy."""
        from autoprune.task import PruningSettings

        return PruningSettings(proxy_images=self.proxy_images, proxy=self.proxy, proxy_measure=self.proxy_measure)


def checkpoint_task(cfg: ProxyTaskConfig) -> PruningTask:
    """The pruning task of ``cfg.checkpoint``'s model, with the data set and validation split it was trained on."""
    from autoprune.task import PruningTask

    return PruningTask.from_checkpoint(cfg.checkpoint, cfg.settings(), data_dir=cfg.data_dir or None)


def run_script(main: Callable[[Any], Any], config: type) -> None:
    """An experiment script's command line: ``config`` parsed by tyro (the script's docstring as its
    help), then ``main``; an ``AutopruneError`` ends it with a one-line error and exit status 2."""
    module = sys.modules[main.__module__]
    name = Path(module.__file__ or "experiment").stem
    try:
        main(tyro.cli(config, description=module.__doc__))
    except AutopruneError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(2)


def command_line(module: str | None = None) -> str:
    """The command that ran this experiment (``module``: the script's, by default from ``sys.argv``)."""
    module = module or f"experiments.{Path(sys.argv[0]).stem}"
    return " ".join(["python", "-m", module] + [shlex.quote(a) for a in sys.argv[1:]])


def save_report(path: Path, config: Any, results: dict[str, Any], markdown: str, module: str | None = None) -> None:
    """``path`` (command, config, versions, date, results) and its Markdown beside it, both atomically."""
    command = command_line(module)
    payload = {
        "command": command,
        "config": dataclasses.asdict(config),
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "results": results,
    }
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
    write_text_atomic(path.with_suffix(".md"), f"<!-- command: {command} -->\n{markdown}\n")


def write_report(name: str, config: Any, results: dict[str, Any], markdown: str, out_dir: str = "docs/results") -> None:
    """Write ``<out_dir>/<name>.json`` (config, versions, command, results) and ``<name>.md``, and print the Markdown."""
    save_report(Path(out_dir) / f"{name}.json", config, results, markdown)
    print(markdown)


def spearman(x: Any, y: Any) -> float | None:
    """Spearman's ρ of two sequences; None where it is undefined (fewer than 3 items, or a constant input)."""
    import warnings

    from scipy.stats import spearmanr

    if len(x) < 3:
        return None
    with warnings.catch_warnings():  # scipy warns on a constant input, whose ρ is nan
        warnings.simplefilter("ignore")
        value = float(spearmanr(x, y).statistic)
    return value if np.isfinite(value) else None


def report_row(rows: list[dict[str, Any]], method: str, target: float, source: str | Path) -> dict[str, Any]:
    """The row of ``method`` at ``target``, or one clear error that lists what the report holds."""
    for row in rows:
        if row["method"] == method and abs(row["target"] - target) < 1e-6:
            return row
    held = sorted({f"{r['method']}@{r['target']:g}" for r in rows})
    raise AutopruneError(f"{source} holds no {method} row at target {target:g}; it holds {', '.join(held) or 'none'}")


def accuracy_table(table: dict[tuple[str, float], dict[str, Any]], columns: list[str], targets: list[float],
                   title: str) -> tuple[list[str], dict[str, list[float]]]:
    """The Markdown table of fine-tuned accuracy, a row per target and a column per method (``table`` maps
    (column, target) to an evaluate row; a cell is ``mean ± std`` over the row's seeds, — where there is
    none), and every cell's seeds keyed ``column@target`` for the JSON report."""
    from autoprune.agents.report import finetuned_runs

    def cell(values: np.ndarray) -> str:
        if len(values) == 0:
            return "—"
        return f"{values.mean():.2f}" + (f" ± {values.std(ddof=1):.2f}" if len(values) > 1 else "")

    runs = {(c, t): finetuned_runs(table.get((c, t))) for c in columns for t in targets}
    lines = [title, "", "| target | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    lines += [f"| {t:.2f} | " + " | ".join(cell(runs[c, t]) for c in columns) + " |" for t in targets]
    return lines, {f"{c}@{t:g}": runs[c, t].tolist() for c in columns for t in targets}


def smoke_splits(splits: DataSplits, finetune_images: int, eval_images: int, seed: int = 0) -> DataSplits:
    """``splits`` cut for smoke runs: a fixed random subset of ``finetune_images`` training images and the
    first ``eval_images`` validation and test images (0: the whole split)."""
    from autoprune.data import DataSplits

    train, val, test = splits.train, splits.val, splits.test
    if finetune_images > 0:
        train = train.subset(np.random.default_rng(seed).permutation(len(train))[:finetune_images])
    if eval_images > 0:
        val, test = (d.subset(torch.arange(min(eval_images, len(d)))) for d in (val, test))
    return DataSplits(train, val, test, splits.val_size)


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

        top = 1.0 / weight.min()  # a pruned fraction of top * weight takes every group to its floor

        def shaped(b: float) -> np.ndarray:  # pruned fraction a * weight per group, a = (1 - b) * top
            return np.clip(1.0 - (1.0 - b) * top * weight, floor, 1.0)

        # the smallest a (largest b) within the target; the fill then spends the rest
        strategy = shaped(space.largest_within(shaped, target, steps=40))
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
