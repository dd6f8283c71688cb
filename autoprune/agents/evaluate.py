"""``evaluate``: the conditional policy against baselines, per target, under the same fine-tune budget.

For every method x target: achieved FLOPs ratio, parameters, proxy accuracy, test accuracy after BN
recalibration, test accuracy after the same fine-tune, and the search cost. Writes ``results.json``,
``results.csv``, ``results.md`` and ``pareto.png``.

A one-epoch fine-tune moves by about half a point from one seed to the next, as much as many
differences between methods; ``finetune_seeds`` > 1 repeats every fine-tune with consecutive seeds
(the same seeds for every method, so differences are paired) and reports mean and standard deviation.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from autoprune.agents.baselines import create_searcher
from autoprune.agents.parallel import parallel_map
from autoprune.agents.policy import ConditionalPolicy
from autoprune.agents.report import paired_differences
from autoprune.agents.searcher import SEARCHERS, SearchResult
from autoprune.errors import AutopruneError
from autoprune.pruning import check_target, count_params
from autoprune.recovery import FinetuneRecipe, calibration_batches, finetuned_test_accuracy, summarize
from autoprune.task import PruningTask
from autoprune.training import evaluate, recalibrate_bn
from autoprune.utils import hms, save_figure, versions, write_text_atomic

COLUMNS = ("method", "target", "achieved_flops_ratio", "params", "proxy_accuracy", "test_accuracy",
           "finetuned_test_accuracy", "finetuned_test_accuracy_std", "search_episodes", "search_seconds")


def evaluate_methods(
    task: PruningTask,
    targets: Sequence[float],
    policy: ConditionalPolicy | None = None,
    baselines: Sequence[str] = ("uniform",),
    *,
    baseline_episodes: int = 100,
    recipe: FinetuneRecipe | None = None,
    seed: int = 0,
    policy_best_of: int = 1,
    finetune_seeds: int = 1,
    log: Callable[[str], None] = print,
    done: Sequence[dict[str, Any]] = (),
    started: Sequence[dict[str, Any]] = (),
    on_save: Callable[[list[dict[str, Any]], list[dict[str, Any]]], None] | None = None,
    workers: int = 1,
    address: str | None = None,
    work_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Rows of the comparison table; every method gets the same fine-tune (``recipe``; None: no fine-tune).

    ``policy_best_of`` > 1 scores that many policy rollouts plus the search's best strategies for the
    target on the proxy (``ConditionalPolicy.best_strategy``); those evaluations count as search cost.
    ``finetune_seeds`` > 1 fine-tunes each pruned model that many times (seeds ``seed``, ``seed + 1``, ...):
    ``finetuned_test_accuracy`` is then the mean, ``finetuned_test_accuracy_std`` the sample standard
    deviation and ``finetuned_test_accuracies`` the single runs.
    ``done`` holds rows from an earlier, interrupted run (they are kept, not recomputed), ``started``
    its rows whose fine-tunes were not all finished: their strategy, search cost and finished seeds
    are kept, so neither a search nor a fine-tune is run twice. ``on_save(rows, started)`` is called
    after every finished fine-tune and every new row, e.g. to save progress.
    ``workers`` > 1 (or a Ray cluster ``address``) runs the fine-tunes of each target's rows in parallel
    on Ray, one thread each; the rows equal a serial run's with one torch thread.
    ``work_dir``: where resumable baselines (AMC's per-target searches) keep their progress, so that an
    interrupted search continues when the evaluation is run again (None: nothing is kept).
    """
    if finetune_seeds < 1:
        raise AutopruneError(f"finetune_seeds must be >= 1, got {finetune_seeds}")
    if policy_best_of < 1:
        raise AutopruneError(f"policy_best_of must be >= 1, got {policy_best_of}")
    for target in targets:  # every target before any work: a bad one must not end a half-done report
        check_target(target)
    space, splits = task.space, task.splits
    rows = list(done)
    finished = {(r["method"], round(r["target"], 6)) for r in rows}
    calib = calibration_batches(splits.train, seed=seed)
    methods: list[tuple[str, Callable[[float], SearchResult]]] = []
    query_seconds: dict[float, float] = {}
    if policy is not None:
        if policy.space is None:
            policy.bind(space, scores=task.scores)
        search_episodes = int(policy.meta.get("episodes", 0))
        search_seconds = float(policy.meta.get("search_seconds", 0.0))

        def query(t: float) -> SearchResult:
            """The strategy at ``t`` and what finding it cost: the one search is charged to the first
            target's row only (it serves all of them), the best-of-K scoring to every row."""
            t0 = time.perf_counter()
            if policy_best_of <= 1:
                strategy, scored = policy.strategy(t, allow_extrapolation=True), 0
            else:
                strategy, _, scored = policy.best_strategy(t, task.score, policy_best_of, seed, allow_extrapolation=True)
            key = round(t, 6)
            query_seconds[key] = time.perf_counter() - t0
            first = key == round(float(targets[0]), 6)
            return SearchResult(strategy, float("nan"), scored + (search_episodes if first else 0),
                                query_seconds[key] + (search_seconds if first else 0.0))

        methods.append(("policy", query))
    for name in baselines:
        keeps = work_dir is not None and SEARCHERS.get(name).resumable  # only a resumable one gets a folder
        searcher = create_searcher(name, work_dir=Path(work_dir) / name if keeps else None)

        def run(t: float, searcher=searcher) -> SearchResult:  # type: ignore[no-untyped-def]
            return searcher.search(task, t, baseline_episodes, seed)

        methods.append((name, run))
    tune = partial(finetuned_test_accuracy, splits=splits, recipe=recipe, teacher=task.model)
    seeds = list(range(seed, seed + finetune_seeds))
    earlier = {(r["method"], round(r["target"], 6)): r for r in started}

    def save(pending: Sequence[_Started] = ()) -> None:
        if on_save is not None:
            now = {(r["method"], round(r["target"], 6)) for r in [*rows, *(p.row for p in pending)]}
            kept = [r for key, r in earlier.items() if key not in now]  # other targets' unfinished rows stay
            on_save(rows, [*kept, *(p.record() for p in pending)])

    for target in targets:
        pending: list[_Started] = []
        for name, find in methods:
            key = (name, round(float(target), 6))
            if key in finished:
                continue
            before = earlier.get(key)
            known = before is not None and before["rebuild"]  # the strategy is known: no search again
            if known:
                found = SearchResult(np.asarray(before["exact_strategy"], dtype=float), before["proxy_accuracy"],
                                     before["search_episodes"], before["search_seconds"])
            else:
                found = find(target)
            strategy = found.strategy
            pruned = found.pruned(task)
            recalibrate_bn(pruned, calib)
            row = {"method": name, "target": float(target), "achieved_flops_ratio": space.flops_ratio(strategy),
                   "params": count_params(pruned),
                   "proxy_accuracy": task.score(strategy) if found.model is None else found.proxy_accuracy,
                   "test_accuracy": evaluate(pruned, splits.test), "finetuned_test_accuracy": None,
                   "search_episodes": found.episodes, "search_seconds": round(found.seconds, 2),
                   "strategy": np.round(strategy, 4).tolist(),
                   "kept_channels": space.keep_counts(strategy).tolist()}  # exact; the rounded ratios may not be
            if name == "policy":  # the share of this target's query (best-of-K) in the search cost
                row["query_seconds"] = before["query_seconds"] if known else round(query_seconds[key[1]], 2)
            tuned: dict[int, float] = {}
            if before is not None and before["kept_channels"] == row["kept_channels"]:  # the same pruned model
                tuned = {int(s): a for s, a in before["seed_accuracies"].items() if int(s) in seeds}
            pending.append(_Started(row, pruned, strategy, found.model is None, tuned))
            if recipe is not None:
                save(pending)  # a long search (AMC's) is not run again after an interruption
        if recipe is not None and pending:  # every fine-tune of this target, in parallel where workers allow
            _finetune_all(pending, seeds, tune, workers, address, save, log)
        for k, p in enumerate(pending):
            row = p.row
            rows.append(row)
            save(pending[k + 1:])
            log(f"{row['method']:>12} target {target:.2f}: FLOPs {row['achieved_flops_ratio']:.3f}  "
                f"proxy {row['proxy_accuracy']:.3f}  test {row['test_accuracy']:.2f}%"
                + (f"  fine-tuned {_finetuned(row)}%" if recipe is not None else ""))
    return rows


@dataclass
class _Started:
    """A row whose fine-tunes are under way: what resuming it needs (``record``)."""

    row: dict[str, Any]
    pruned: nn.Module
    strategy: np.ndarray
    rebuild: bool  # the pruned model is the task's criterion applied to the strategy (not the method's own)
    tuned: dict[int, float]  # fine-tune seed -> test accuracy, for the seeds already finished

    def record(self) -> dict[str, Any]:
        return {**self.row, "exact_strategy": self.strategy.tolist(), "rebuild": self.rebuild,
                "seed_accuracies": {str(s): a for s, a in sorted(self.tuned.items())}}


def _finetune_all(pending: list[_Started], seeds: list[int], tune: Callable[[tuple[nn.Module, int]], float],
                  workers: int, address: str | None, save: Callable[[Sequence[_Started]], None],
                  log: Callable[[str], None]) -> None:
    """The fine-tunes of one target's rows not finished yet, saved and logged one by one as they end;
    then each row's summary over ``seeds``."""
    jobs = [(p, s) for p in pending for s in seeds if s not in p.tuned]
    total = len(pending) * len(seeds)
    start, ended = time.perf_counter(), 0

    def finished(index: int, accuracy: float) -> None:
        nonlocal ended
        p, s = jobs[index]
        p.tuned[s] = accuracy
        ended += 1
        save(pending)
        left = (time.perf_counter() - start) / ended * (len(jobs) - ended)  # at this run's pace, workers included
        log(f"{p.row['method']:>12} target {p.row['target']:.2f} seed {s}: fine-tuned {accuracy:.2f}% "
            f"({sum(len(q.tuned) for q in pending)} of {total} fine-tunes at this target, {hms(left)} left at it)")

    parallel_map(tune, [(p.pruned, s) for p, s in jobs], workers, address, on_result=finished)
    for p in pending:
        p.row.update(summarize([p.tuned[s] for s in seeds]))


def _finetuned(row: dict[str, Any]) -> str:
    """'84.24', or '84.24 ± 0.31' when the row holds several fine-tune seeds; '—' without a fine-tune."""
    if row["finetuned_test_accuracy"] is None:
        return "—"
    std = row.get("finetuned_test_accuracy_std")
    return f"{row['finetuned_test_accuracy']:.2f}" + ("" if std is None else f" ± {std:.2f}")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| method | target | FLOPs ratio | params | proxy | test acc | fine-tuned | search episodes | search s |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['method']} | {r['target']:.2f} | {r['achieved_flops_ratio']:.3f} | {r['params']:,} | "
                     f"{r['proxy_accuracy']:.3f} | {r['test_accuracy']:.2f} | {_finetuned(r)} | {r['search_episodes']} | {r['search_seconds']:.1f} |")
    methods = {r["method"] for r in rows}
    if "policy" in methods:
        lines.append("")
        lines.append("The policy's search cost is one search shared by all targets (plus, with best-of-K, the "
                     "candidates scored per target); every other searching method pays its cost per target.")
        policy_rows = {round(r["target"], 6): r for r in rows if r["method"] == "policy"}
        search_s = policy_search_seconds(rows)
        for name in sorted(m for m in methods if m in SEARCHERS.names() and SEARCHERS.get(m).searches):
            targets = [round(r["target"], 6) for r in rows if r["method"] == name]
            total = sum(r["search_seconds"] for r in rows if r["method"] == name)
            queries = sum(policy_rows[t].get("query_seconds", 0.0) for t in targets if t in policy_rows)
            lines.append(f"Total search time: {name} {total:.0f} s over {len(targets)} targets; policy {search_s:.0f} s "
                         f"of search for all of them + {queries:.0f} s of queries at the same targets "
                         f"({(search_s + queries) / max(total, 1e-9):.2f} of {name}'s time).")
    return "\n".join(lines)


def policy_search_seconds(rows: list[dict[str, Any]]) -> float:
    """The policy's one search: ``evaluate_methods`` charges it to the row of the first target evaluated, the
    other rows carry their query only."""
    return max((r["search_seconds"] - r.get("query_seconds", 0.0) for r in rows if r["method"] == "policy"), default=0.0)


def paired_verdicts(rows: list[dict[str, Any]], method: str, other: str) -> list[str]:
    """One line per target: ``method`` minus ``other`` over their paired fine-tune seeds, and whether
    the seeds resolve the difference (``PairedDifference.verdict``: a paired t-test at the 5% level)."""
    lines = []
    for target, d in paired_differences(rows, method, other).items():
        if d.seeds < 2:
            continue
        if d.verdict == "within noise":
            verdict = f"not resolved: within the seed noise of {d.seeds} paired seeds"
        else:
            verdict = f"{method if d.mean > 0 else other} ahead, resolved by {d.seeds} paired seeds (t-test, 5%)"
        lines.append(f"target {target:.2f}: {method} - {other} = {d} points (standard error); {verdict}")
    return lines


def pareto_plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "finetuned_test_accuracy" if rows and rows[0]["finetuned_test_accuracy"] is not None else "test_accuracy"
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r["achieved_flops_ratio"], r[key], r.get(f"{key}_std") or 0.0) for r in rows if r["method"] == method)
        x, y, err = zip(*pts)
        ax.errorbar(x, y, yerr=err if any(err) else None, marker="o", capsize=3, label=method)
    ax.set_xlabel("FLOPs ratio (pruned / dense)")
    ax.set_ylabel("test accuracy (%)" + (" after fine-tune" if key.startswith("finetuned") else ""))
    ax.grid(alpha=0.3)
    if rows:  # a report saved before its first finished row has nothing to label yet
        ax.legend()
    save_figure(fig, path, dpi=120)


def write_report(rows: list[dict[str, Any]], out_dir: str | os.PathLike, config: dict[str, Any],
                 base: dict[str, Any] | None = None, started: Sequence[dict[str, Any]] = ()) -> None:
    """``results.json`` (config, versions, ``base``: the unpruned model's architecture and accuracy, rows,
    and while fine-tunes are under way ``started``: the rows ``evaluate_methods`` resumes from),
    ``results.csv``, ``results.md`` and ``pareto.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"config": config, "base": base or {}, "versions": versions(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "rows": rows, **({"started": list(started)} if started else {})}
    write_text_atomic(out / "results.json", json.dumps(payload, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*COLUMNS, "strategy", "kept_channels"], extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "strategy": " ".join(map(str, r["strategy"])),
                         "kept_channels": " ".join(map(str, r.get("kept_channels", [])))})
    write_text_atomic(out / "results.csv", buf.getvalue())
    write_text_atomic(out / "results.md", markdown_table(rows) + "\n")
    pareto_plot(rows, out / "pareto.png")
