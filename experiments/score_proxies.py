"""How well does each proxy predict fine-tuned accuracy among competitive strategies? (issue #13)

Reads the yardstick of ``experiments.fidelity_data`` (strategies with their fine-tuned test accuracy;
a partial file works: the strategies with at least one fine-tuned seed count, each by the mean over the
seeds that all of them have), scores every strategy with each proxy, and reports per target Spearman's ρ of the proxy against the mean fine-tuned
accuracy, whether the proxy's top strategy is the fine-tune's best (ties in the proxy count
fractionally: the chance a random tie-break picks the best) and the fine-tuned accuracy lost by
taking the proxy's pick instead of the best (points), their means over the targets, and the cost of
each proxy (seconds per strategy, building the pruned model included, and relative to ``bn``).

A proxy is a registry name (``autoprune.task.proxy.PROXIES``) with optional ``key=value`` options
after a colon: ``steps`` (SGD or distillation steps), ``images`` (validation images scored), ``recon``
(calibration images of the reconstruction), ``lr`` and ``batch`` (of the steps), ``calib`` (BN
calibration batches), ``bn`` (``0``: no adaptive BN, the pruned model keeps the base model's BN
statistics -- with ``recon-bn``, the reconstruction alone), ``measure`` (what is reported of the predictions: ``accuracy``, ``soft`` or ``kl``,
``autoprune.task.proxy.MEASURES``); e.g. ``distill:steps=500,lr=0.02`` or ``bn:measure=kl``.

    python -m experiments.score_proxies --threads 2
    python -m experiments.score_proxies --proxies bn bn:measure=soft bn:measure=kl --threads 1
    python -m experiments.score_proxies --proxies bn distill:steps=100 distill:steps=400 recon-distill:steps=400 --threads 2

A proxy's scores do not depend on the fine-tunes, so ``--reuse`` takes them from earlier reports of this
script (made on the same base model, settings and proxy images; where several hold a proxy, the last one
named) and scores only the strategies they lack: score every strategy once while the second seed's
fine-tunes run, and report again when they are done. A reused proxy's cost is the one measured when its
scores were made, and its entry names that report.

    python -m experiments.score_proxies --proxies bn distill --reuse docs/results/proxy_scores_resnet20.json

Scoring is slow for the distillation proxies (about a minute per strategy), so every score is also kept
in ``<out-dir>/<name>.partial.json`` as it is made: the same command run again, after an interruption,
reuses those scores and goes on where it stopped. The partial file is removed once the report is written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.errors import AutopruneError
from autoprune.task import PruningSettings, PruningTask
from autoprune.task.proxy import PROXIES
from autoprune.task.task import make_proxy
from autoprune.utils import read_json, write_text_atomic
from experiments.common import TaskConfig, run_script, spearman, write_report
from experiments.fidelity_data import read_yardstick, seed_means


def on_off(value: str) -> bool:
    """``1``/``on``/``true`` or ``0``/``off``/``false``."""
    words = {"1": True, "on": True, "true": True, "0": False, "off": False, "false": False}
    if value.lower() not in words:
        raise ValueError(value)
    return words[value.lower()]


# spec option -> (AccuracyProxy argument, parser, what the parser takes)
OPTIONS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "steps": ("finetune_steps", int, "an integer"), "images": ("num_images", int, "an integer"),
    "recon": ("reconstruct_images", int, "an integer"), "lr": ("finetune_lr", float, "a number"),
    "batch": ("finetune_batch_size", int, "an integer"), "calib": ("calib_batches", int, "an integer"),
    "bn": ("adaptive_bn", on_off, "0 or 1"), "measure": ("measure", str, "a measure name")}


@dataclass
class Config(TaskConfig):
    data: str = "docs/results/fidelity_resnet20.json"  # written by experiments.fidelity_data
    proxies: list[str] = field(default_factory=lambda: ["bn", "recon-bn", "distill", "recon-distill"])
    checkpoint: str = ""  # the base model; "": the data file's
    limit: int = 0  # > 0: only the first N usable strategies of each target (smoke runs)
    threads: int = 2
    name: str = "proxy_scores_resnet20"  # report name
    reuse: list[str] = field(default_factory=list)  # earlier reports of this script: their scores are kept
    out_dir: str = "docs/results"


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,...`` -> (registered proxy name, ``AccuracyProxy`` arguments)."""
    name, _, rest = spec.partition(":")
    PROXIES.get(name)  # a clear error for an unknown name
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, _, value = item.partition("=")
        if key not in OPTIONS or not value:
            raise AutopruneError(f"proxy option {item!r} in {spec!r}: use key=value with a key among "
                                 f"{', '.join(OPTIONS)}")
        argument, parse, what = OPTIONS[key]
        try:
            options[argument] = parse(value)
        except ValueError:
            raise AutopruneError(f"proxy option {item!r} in {spec!r}: give {what}, not {value!r}") from None
    return name, options


def usable(strategies: list[dict[str, Any]], limit: int = 0) -> list[dict[str, Any]]:
    """The strategies with at least one fine-tuned seed (the first ``limit`` of each target when > 0)."""
    rows, per_target = [], {}
    for row in strategies:
        if row.get("finetuned") and (limit <= 0 or per_target.get(row["target"], 0) < limit):
            rows.append(row)
            per_target[row["target"]] = per_target.get(row["target"], 0) + 1
    return rows


def fidelity(scores: list[float], tuned: list[float], ids: list[str]) -> dict[str, Any]:
    """Spearman ρ, whether the proxy's pick is the fine-tune's best, and the accuracy gap to the best."""
    scores_a, tuned_a = np.asarray(scores, float), np.asarray(tuned, float)
    rho = spearman(scores_a, tuned_a)  # None for tied proxy scores
    top = np.flatnonzero(scores_a == scores_a.max())  # the proxy's pick, ties included
    best = float(tuned_a.max())
    return {"strategies": len(scores), "spearman": rho,
            "picks_best": float(np.mean(tuned_a[top] >= best - 1e-9)), "gap": float(best - tuned_a[top].mean()),
            "pick": [ids[i] for i in top], "best": ids[int(np.argmax(tuned_a))]}


def seed_agreement(rows: list[dict[str, Any]], seeds: list[str]) -> float | None:
    """Spearman ρ between the fine-tuned accuracies of the first two seeds: the ceiling of any proxy's ρ."""
    full = [r for r in rows if all(s in r["finetuned"] for s in seeds[:2])]
    if len(seeds) < 2:
        return None
    return spearman([r["finetuned"][seeds[0]] for r in full], [r["finetuned"][seeds[1]] for r in full])


def reusable(paths: list[str], identity: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The earlier reports' scores per proxy spec (``{"scores": {id: score}, "kept": {id: counts},
    "seconds": s, "report": path}``; the last report holding a spec wins); an error when one was made on
    another base model, settings or proxy images."""
    found: dict[str, dict[str, Any]] = {}
    for path in paths:
        found.update(_reusable(path, identity))
    return found


def _reusable(path: str, identity: dict[str, Any]) -> dict[str, dict[str, Any]]:
    loaded = read_json(path, "proxy scores")
    results = loaded.get("results") if isinstance(loaded, dict) else None
    if not isinstance(results, dict) or "identity" not in results or "kept_channels" not in results:
        raise AutopruneError(f"{path} is not a report of experiments.score_proxies with reusable scores "
                             "(written before --reuse existed?); score again without --reuse")
    stored = dict(results["identity"])
    stored["settings"] = PruningSettings.normalized(stored.get("settings", {}))  # settings added since: defaults
    if stored != identity:
        differs = sorted(k for k in identity if stored.get(k) != identity[k])
        raise AutopruneError(f"{path} was scored with another {', '.join(differs)}; its scores cannot be reused")
    return {p["proxy"]: {"scores": {i: s[p["proxy"]] for i, s in results["scores"].items() if p["proxy"] in s},
                         "kept": results["kept_channels"], "seconds": p["seconds_per_strategy"], "report": path}
            for p in results["proxies"]}


def base_task(path: str, data: dict[str, Any], checkpoint: str, data_dir: str,
              proxy_images: int | None) -> tuple[PruningSettings, PruningTask]:
    """The settings of the yardstick ``data`` read from ``path`` (scoring ``proxy_images`` validation
    images) and its base model's task, loaded from ``checkpoint`` ("": the one the yardstick names); an
    exit when that is another model."""
    from autoprune.agents.common import fingerprint

    settings = PruningSettings.from_dict(data["settings"]).replace(proxy_images=proxy_images)
    base = PruningTask.from_checkpoint(checkpoint or data["checkpoint"], settings, data_dir=data_dir or None)
    if fingerprint(base.model) != data["base_fingerprint"]:
        raise SystemExit(f"{path} was made from another base model than {checkpoint or data['checkpoint']}")
    return settings, base


def proxy_task(base: PruningTask, settings: PruningSettings, name: str, options: dict[str, Any]) -> PruningTask:
    """``base``'s task (model, data, space, importance scores) scored by proxy ``name`` with ``options``."""
    changed = settings.replace(proxy=name)
    proxy = make_proxy(changed, base.model, base.splits, **options)
    return PruningTask(base.model, base.splits, changed, space=base.space, scores=base.scores, proxy=proxy)


def main(cfg: Config) -> None:
    torch.set_num_threads(cfg.threads)
    data = read_yardstick(cfg.data)
    specs = [(spec, *parse_spec(spec)) for spec in cfg.proxies]
    rows = usable(data["strategies"], cfg.limit)
    if not rows:
        raise SystemExit(f"{cfg.data} holds no fine-tuned strategy yet")
    seeds = [str(s) for s in data["seeds"]]
    common, tuned = seed_means(rows, seeds)
    if not common:
        raise SystemExit(f"{cfg.data}: no fine-tune seed is done for every strategy yet; use --limit or wait")
    targets = [t for t in data["targets"] if any(r["target"] == t for r in rows)]
    settings, base = base_task(cfg.data, data, cfg.checkpoint, cfg.data_dir, cfg.proxy_images)
    identity = {"base model": data["base_fingerprint"], "settings": settings.to_dict()}
    partial = Path(cfg.out_dir) / f"{cfg.name}.partial.json"  # this run's scores so far, for an interrupted run
    earlier = reusable(cfg.reuse, identity)
    if partial.is_file():
        try:
            earlier.update(reusable([str(partial)], identity))
        except AutopruneError as error:
            raise AutopruneError(f"{error} (an interrupted run's scores: remove the file to score afresh, "
                                 "or give another --name)") from None
    print(f"{len(rows)} of {len(data['strategies'])} strategies have a fine-tuned seed; scoring them with "
          f"{', '.join(cfg.proxies)}", flush=True)

    proxies, scores, seconds_so_far = [], {r["id"]: {} for r in rows}, {}
    for spec, name, options in specs:
        task = proxy_task(base, settings, name, options)
        proxy = task.proxy
        kept = earlier.get(spec, {"scores": {}, "kept": {}, "seconds": 0.0, "report": None})
        todo = []
        for row in rows:  # a kept score counts only for the same strategy
            if row["id"] in kept["scores"] and kept["kept"].get(row["id"]) == row["kept_channels"]:
                scores[row["id"]][spec] = kept["scores"][row["id"]]
            else:
                todo.append(row)
        reused = len(rows) - len(todo)
        if reused:
            print(f"  {spec}: {reused} scores reused from {kept['report']}", flush=True)
        t0 = time.perf_counter()
        for i, row in enumerate(todo, 1):
            scores[row["id"]][spec] = task.score(np.asarray(row["kept_channels"]) / base.space.channels)
            seconds_so_far[spec] = mean_seconds(time.perf_counter() - t0, i, reused, kept["seconds"])
            save_partial(partial, identity, rows, scores, seconds_so_far)
            if i % 10 == 0 or i == len(todo):
                print(f"  {spec}: {i}/{len(todo)} strategies ({(time.perf_counter() - t0) / i:.1f} s each)", flush=True)
        entry: dict[str, Any] = {
            "proxy": spec, "name": name, "measure": proxy.measure_name, "images": proxy.num_images,
            "steps": proxy.finetune_steps,
            "lr": proxy.finetune_lr if proxy.finetune_steps else None,
            "reconstruct_images": sum(len(b) for b in proxy.reconstruction) if proxy.reconstruction else 0,
            "seconds_per_strategy": mean_seconds(time.perf_counter() - t0 if todo else 0.0, len(todo), reused,
                                                 kept["seconds"]), "reused": reused,
            "reused_from": kept["report"] if reused else None, "per_target": {}}
        for target in targets:
            mine = [r for r in rows if r["target"] == target]
            entry["per_target"][f"{target:g}"] = fidelity([scores[r["id"]][spec] for r in mine],
                                                          [tuned[r["id"]] for r in mine], [r["id"] for r in mine])
        per_target = entry["per_target"].values()
        rhos = [v["spearman"] for v in per_target if v["spearman"] is not None]
        entry["mean"] = {"spearman": float(np.mean(rhos)) if rhos else None,
                         "picks_best": float(np.sum([v["picks_best"] for v in per_target])),
                         "gap": float(np.mean([v["gap"] for v in per_target]))}
        proxies.append(entry)
    bn = next((p["seconds_per_strategy"] for p in proxies if p["proxy"] == "bn"), None)
    for p in proxies:
        p["relative_cost"] = p["seconds_per_strategy"] / bn if bn else None
    results = {"data": cfg.data, "strategies_total": len(data["strategies"]), "strategies_used": len(rows),
               "with_all_seeds": sum(all(s in r["finetuned"] for s in seeds) for r in rows), "seeds_used": common,
               "targets": targets,
               "seed_to_seed_spearman": {f"{t:g}": seed_agreement([r for r in rows if r["target"] == t], seeds)
                                         for t in targets},
               "seed_to_seed_strategies": {f"{t:g}": sum(r["target"] == t and all(s in r["finetuned"] for s in seeds[:2])
                                                         for r in rows) for t in targets},
               "proxies": proxies, "scores": scores, "identity": identity,
               "kept_channels": {r["id"]: r["kept_channels"] for r in rows}}
    write_report(cfg.name, cfg, results, markdown(results), out_dir=cfg.out_dir)
    partial.unlink(missing_ok=True)


def mean_seconds(elapsed: float, scored: int, reused: int, reused_seconds: float) -> float:
    """A proxy's cost per strategy over ``scored`` new scores (``elapsed`` s in all) and ``reused`` ones,
    each of which costs what it cost when it was made."""
    return (elapsed + reused_seconds * reused) / (scored + reused)


def save_partial(path: Path, identity: dict[str, Any], rows: list[dict[str, Any]],
                 scores: dict[str, dict[str, float]], seconds: dict[str, float]) -> None:
    """The scores made so far, in the shape ``reusable`` reads (a proxy's cost: its mean so far)."""
    results = {"identity": identity, "kept_channels": {r["id"]: r["kept_channels"] for r in rows}, "scores": scores,
               "proxies": [{"proxy": spec, "seconds_per_strategy": s} for spec, s in seconds.items()]}
    write_text_atomic(path, json.dumps({"results": results}) + "\n")


def markdown(results: dict[str, Any]) -> str:
    def num(value: float | None, fmt: str = ".2f") -> str:
        return "–" if value is None else format(value, fmt)

    targets = [f"{t:g}" for t in results["targets"]]
    lines = [f"Proxies against fine-tuned test accuracy on {results['strategies_used']} of {results['strategies_total']} "
             f"strategies of `{results['data']}` (those with a fine-tuned seed; {results['with_all_seeds']} with every "
             f"seed; scored on the mean over seed(s) {', '.join(results['seeds_used'])}, which every one has). "
             "ρ: Spearman's rank correlation of proxy and mean fine-tuned accuracy within a target; picks best: "
             "targets where the proxy's top strategy is the fine-tune's best (ties count fractionally); gap: fine-tuned "
             "accuracy of the best minus that of the proxy's pick (points, mean over targets).", "",
             "| proxy | " + " | ".join(f"ρ {t} (n={results['proxies'][0]['per_target'][t]['strategies']})" for t in targets)
             + " | mean ρ | picks best | mean gap | s / strategy | cost × bn |",
             "|---|" + "---|" * (len(targets) + 5)]
    for p in results["proxies"]:
        cells = [num(p["per_target"][t]["spearman"]) for t in targets]
        lines.append(f"| {p['proxy']} | " + " | ".join(cells) + f" | {num(p['mean']['spearman'])} | "
                     f"{p['mean']['picks_best']:.1f} of {len(targets)} | {p['mean']['gap']:.2f} | "
                     f"{p['seconds_per_strategy']:.1f} | {num(p['relative_cost'], '.1f')} |")
    counts = results.get("seed_to_seed_strategies", {})
    agreement = ", ".join(f"{t}: {num(v)}" + (f" (n={counts[t]})" if t in counts else "")
                          for t, v in results["seed_to_seed_spearman"].items())
    lines += ["", "Seed-to-seed ρ of the fine-tune itself (the ceiling of any proxy's ρ) per target, over the n "
              f"strategies with both seeds: {agreement}."]
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main, Config)
