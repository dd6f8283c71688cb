"""Does sparse training before pruning help, and does iterative pruning beat one shot at equal cost? (issue #17)

Every cell of {plain base, sparse base} x {methods} x {one-shot, iterative}, at each target and for each
seed, is one ``autoprune.agents.query.prune_to_target`` call with the SAME total fine-tune budget:

- *iterative*: ``steps`` (K) prune--fine-tune steps of ``epochs_per_step`` (E) epochs each, the channel
  counts shrinking linearly to the method's final strategy (``prune --iterative K``);
- *one-shot*: the same final strategy pruned at once, then one fine-tune of K x E epochs.

The sparse base is the plain one after ``autoprune train --sparsity bn-l1 --init plain.pt`` (the first
command below). The methods are baseline searchers (``global`` ranking, ``elasticity``, any other of
``autoprune methods``) and ``policy``: the policy searched on that base (``--policy-plain`` /
``--policy-sparse``; "" = no policy rows for that base). A base's task takes its policy's pruning
settings (the library's without a policy); ``--criterion`` overrides the criterion that picks the
channels within each group for every row (e.g. ``bn_scale``, which reads the BatchNorm scales the
sparse training drove to zero). Fine-tunes use the shared recipe (one-cycle to lr 0.05, distilling
from that row's base model); seed s seeds the fine-tune (iterative step k: s + k - 1).

One row per (base, method, target, mode, seed): achieved FLOPs ratio, parameters, kept channels,
proxy accuracy, test accuracy before the fine-tune (BatchNorm re-estimated; iterative: before the last
step's fine-tune, each step in ``step_log``), fine-tuned test accuracy, total epochs, seconds. Rows run
seed by seed (every cell of seed 0 first), so a partial file already pairs every cell. The report
(``<out-dir>/<name>.json`` and ``.md``) is rewritten atomically after every row; ``--resume`` keeps the
finished rows and runs only the missing ones (the bases, settings and recipe must be the same). The
Markdown has a table per target (rows: base x method, columns: one-shot and iterative, mean ± std over
seeds), the check that every row spent the same total epochs, and the paired differences sparse − plain
and iterative − one-shot (mean ± standard error over seeds).

The bases and plain policies come from ``experiments/cross_arch.sh ARCH`` (searched over 0.25:0.75, so
target 0.2 needs ``--allow-extrapolation``; rows record ``extrapolated``). Per architecture (ResNet-56
shown; for VGG-16-BN replace resnet56 by vgg16_bn):

    autoprune train --arch resnet56 --data cifar10 --data-dir ../shared/data/cifar10 --init checkpoints/resnet56-cifar10.pt --sparsity bn-l1 --sparsity-lambda 1e-4 --dynamic-thresholds --epochs 20 --lr 0.05 --out checkpoints/resnet56-cifar10-sparse.pt
    autoprune search --checkpoint checkpoints/resnet56-cifar10-sparse.pt --data-dir ../shared/data/cifar10 --targets 0.25:0.75 --episodes 400 --proxy-images 1000 --observation transferable --seed 0 --out policies/resnet56-cifar10-sparse
    python -m experiments.sparsity_study --plain checkpoints/resnet56-cifar10.pt --sparse checkpoints/resnet56-cifar10-sparse.pt --policy-plain policies/resnet56-cifar10 --policy-sparse policies/resnet56-cifar10-sparse --allow-extrapolation --threads 2
    python -m experiments.sparsity_study --plain checkpoints/resnet56-cifar10.pt --sparse checkpoints/resnet56-cifar10-sparse.pt --policy-plain policies/resnet56-cifar10 --policy-sparse policies/resnet56-cifar10-sparse --allow-extrapolation --threads 2 --resume
    python -m experiments.sparsity_study --plain checkpoints/resnet56-cifar10.pt --sparse checkpoints/resnet56-cifar10-sparse.pt --policy-plain policies/resnet56-cifar10 --policy-sparse policies/resnet56-cifar10-sparse --allow-extrapolation --criterion bn_scale --name sparsity_resnet56_bn_scale --threads 2

A smoke run of the plain rows on the committed ResNet-20 and its policy (about two minutes on a 2-core CPU; not a measurement):

    python -m experiments.sparsity_study --plain checkpoints/resnet20-cifar10.pt --sparse "" --policy-plain policies/resnet20-cifar10 --policy-sparse "" --targets 0.5 --methods global elasticity policy --seeds 0 --steps 2 --finetune-images 500 --eval-images 500 --proxy-images 200 --threads 1 --name sparsity_smoke --out-dir /tmp
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.agents.baselines import list_searchers
from autoprune.agents.common import fingerprint
from autoprune.agents.policy import ConditionalPolicy, load_policy, read_policy
from autoprune.agents.query import prune_to_target
from autoprune.agents.report import mean_and_standard_error
from autoprune.checkpoint import read_checkpoint
from autoprune.data import DataSplits, load_splits
from autoprune.errors import AutopruneError
from autoprune.pruning import check_target
from autoprune.recovery import FinetuneRecipe
from autoprune.task import PruningSettings, PruningTask, importance_data
from autoprune.training import set_training_device
from autoprune.utils import hms, seed_everything
from experiments.common import run_script, save_report, smoke_splits

FORMAT = "autoprune.sparsity_study/1"
BASES = ("plain", "sparse")
MODES = ("one-shot", "iterative")


@dataclass
class Config:
    plain: str = "checkpoints/resnet56-cifar10.pt"  # the base trained without a sparsity penalty
    sparse: str = "checkpoints/resnet56-cifar10-sparse.pt"  # the plain base after sparse training; "": plain rows only
    policy_plain: str = "policies/resnet56-cifar10"  # policy searched on the plain base; "": no policy rows for it
    policy_sparse: str = "policies/resnet56-cifar10-sparse"  # policy searched on the sparse base; "": none
    targets: list[float] = field(default_factory=lambda: [0.2, 0.3, 0.5])
    methods: list[str] = field(default_factory=lambda: ["global", "elasticity", "policy"])  # searchers and/or policy
    steps: int = 3  # K: prune-fine-tune steps of the iterative mode (>= 2)
    epochs_per_step: int = 1  # E: fine-tune epochs per iterative step; one-shot fine-tunes K x E epochs
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # fine-tune seeds, the same for every cell
    criterion: str = ""  # channel criterion within groups; "": the policy's settings (the library's without one)
    allow_extrapolation: bool = False  # policy rows at targets outside the policy's trained range
    precision: str = "fp32"  # of the fine-tunes: fp32 or bf16
    device: str = "cpu"  # where the fine-tunes run: cpu, cuda or auto
    finetune_images: int = 0  # > 0: fine-tune on a fixed random subset of this many training images (smoke runs)
    eval_images: int = 0  # > 0: only the first N validation and test images (smoke runs)
    data_dir: str = "../shared/data/cifar10"  # data folder when the checkpoints' data set needs one
    proxy_images: int = 1000  # validation images the proxy scores a strategy on
    threads: int = 2  # CPU threads for torch
    resume: bool = False  # keep the rows of an existing report, run the missing ones
    name: str = ""  # report name; default sparsity_<arch>
    out_dir: str = "docs/results"


# ---------------------------------------------------------------------------------------- input
def check(cfg: Config) -> dict[str, dict[str, Any]]:
    """Refuse bad input before any model is loaded; the bases to measure: role -> checkpoint, policy, payload."""
    if cfg.steps < 2:
        raise AutopruneError(f"--steps must be >= 2 (the iterative mode's prune-fine-tune steps), got {cfg.steps}")
    if cfg.epochs_per_step < 1:
        raise AutopruneError(f"--epochs-per-step must be >= 1, got {cfg.epochs_per_step}")
    for what, values in (("--targets", cfg.targets), ("--methods", cfg.methods), ("--seeds", cfg.seeds)):
        if not values:
            raise AutopruneError(f"{what} is empty")
    for target in cfg.targets:
        check_target(target)
    known = [*list_searchers(), "policy"]
    unknown = [m for m in cfg.methods if m not in known]
    if unknown:
        raise AutopruneError(f"unknown method(s) {', '.join(unknown)}; choose among {', '.join(known)}")
    if not cfg.plain:
        raise AutopruneError("--plain is needed: the base model trained without a sparsity penalty")
    bases = {}
    for role, checkpoint, policy in (("plain", cfg.plain, cfg.policy_plain), ("sparse", cfg.sparse, cfg.policy_sparse)):
        if not checkpoint:
            continue
        if not Path(checkpoint).is_file():
            raise AutopruneError(f"--{role}: checkpoint {checkpoint} does not exist")
        if policy and not Path(policy).is_dir():
            raise AutopruneError(f"--policy-{role}: {policy} is not a directory (a policy from `autoprune search`)")
        bases[role] = {"checkpoint": checkpoint, "policy": policy or None, "payload": read_checkpoint(checkpoint)}
    if "policy" in cfg.methods and not any(b["policy"] for b in bases.values()):
        raise AutopruneError("method policy needs a policy directory: give --policy-plain and/or --policy-sparse, "
                             "or leave policy out of --methods")
    if "sparse" in bases and bases["sparse"]["payload"]["arch"] != bases["plain"]["payload"]["arch"]:
        raise AutopruneError(f"the sparse base is a {bases['sparse']['payload']['arch']}, the plain base a "
                             f"{bases['plain']['payload']['arch']}: give two models of one architecture")
    return bases


def base_splits(payload: dict[str, Any], cfg: Config, cache: dict[tuple, DataSplits]) -> DataSplits:
    """The data a checkpoint was trained on (shared between bases of the same data), cut for smoke runs."""
    meta = payload.get("meta", {})
    key = (meta.get("dataset", "digits"), meta.get("val_size"))
    if key not in cache:
        cache[key] = smoke_splits(load_splits(key[0], cfg.data_dir or None, key[1]), cfg.finetune_images, cfg.eval_images)
    return cache[key]


def base_task(base: dict[str, Any], splits: DataSplits, cfg: Config) -> tuple[PruningTask, ConditionalPolicy | None]:
    """A base model's task under its policy's settings (the library's without one), and the policy."""
    settings = PruningSettings()
    if base["policy"]:
        settings = PruningSettings.from_policy_meta(read_policy(base["policy"])[0])
    settings = settings.replace(proxy_images=cfg.proxy_images, **({"criterion": cfg.criterion} if cfg.criterion else {}))
    task = PruningTask.from_checkpoint(base["checkpoint"], settings, splits=splits)
    policy = None
    if base["policy"]:
        policy = load_policy(base["policy"], model=task.model, data=importance_data(task.splits),
                             input_shape=task.splits.input_shape)
    return task, policy


# ---------------------------------------------------------------------------------------- the report
def save(path: Path, cfg: Config, results: dict[str, Any]) -> None:
    save_report(path, cfg, results, markdown(results), module="experiments.sparsity_study")


def load(path: Path, cfg: Config, setup: dict[str, Any]) -> list[dict[str, Any]]:
    """The finished rows of an existing report to continue (``--resume``)."""
    if not path.is_file():
        return []
    old = json.loads(path.read_text())["results"]
    if not cfg.resume:
        raise AutopruneError(f"{path} holds {len(old['rows'])} rows: pass --resume to continue it, or another --name")
    differ = [k for k in setup if k != "bases" and old["setup"].get(k) != setup[k]]
    differ += [f"the {role} base" for role, b in setup["bases"].items()
               if role in old["setup"]["bases"] and old["setup"]["bases"][role] != b]
    if differ:
        raise AutopruneError(f"{path} was measured with another {', '.join(differ)}: resume with the same settings, "
                             "or write a new report with another --name")
    return old["rows"]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    std = f" ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else ""
    return f"{np.mean(values):.2f}{std} ({len(values)})"


def _paired(diffs: list[float]) -> str:
    """Mean ± standard error of paired differences, with their count."""
    if not diffs:
        return "–"
    mean, err = mean_and_standard_error(diffs)
    return f"{mean:+.2f}" + (f" ± {err:.2f}" if err is not None else "") + f" ({len(diffs)})"


def seed_paired_differences(rows: list[dict[str, Any]], a: dict[str, Any], b: dict[str, Any]) -> list[float]:
    """Test accuracy of the rows matching ``a`` minus that of the rows matching ``b``, paired by seed."""
    def by_seed(match: dict[str, Any]) -> dict[int, float]:
        return {r["seed"]: r["test_accuracy"] for r in rows if all(r[k] == v for k, v in match.items())}

    first, second = by_seed(a), by_seed(b)
    return [first[s] - second[s] for s in sorted(set(first) & set(second))]


def markdown(results: dict[str, Any]) -> str:
    rows, setup = results["rows"], results["setup"]
    k, e = setup["steps"], setup["epochs_per_step"]
    bases = [b for b in BASES if b in results["bases"]]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [f"Test accuracy (%) of {results['arch']} after pruning and fine-tuning, mean ± std over seeds (count); "
             f"one-shot: the final strategy at once, then {k * e} fine-tune epochs; iterative: {k} prune–fine-tune "
             f"steps of {e} epoch(s).", ""]
    for role in bases:
        b = results["bases"][role]
        accuracy = f"{b['test_accuracy']:.2f}%" if b["test_accuracy"] is not None else "?"
        policy = f", policy `{b['policy']}`" if b["policy"] else ""
        lines.append(f"- {role} base `{b['checkpoint']}` ({accuracy}), criterion {b['settings']['criterion']}{policy}")
    totals = sorted({r["total_epochs"] for r in rows})
    if len(totals) == 1:
        lines += ["", f"Total fine-tune epochs: {totals[0]} in every row, one-shot and iterative alike."]
    elif totals:
        lines += ["", f"**Total fine-tune epochs differ between rows ({', '.join(map(str, totals))}): the cells are "
                  "not comparable.**"]
    for target in sorted({r["target"] for r in rows}):
        here = [r for r in rows if r["target"] == target]
        lines += ["", f"### Target {target:g}", "",
                  "| base | method | FLOPs ratio | one-shot | iterative | iterative − one-shot |", "|---|---|---|---|---|---|"]
        for role in bases:
            for method in methods:
                cell = [r for r in here if r["base"] == role and r["method"] == method]
                if not cell:
                    continue
                accs = {m: [r["test_accuracy"] for r in cell if r["mode"] == m] for m in MODES}
                diff = seed_paired_differences(here, {"base": role, "method": method, "mode": "iterative"},
                                          {"base": role, "method": method, "mode": "one-shot"})
                flops = max(r["achieved_flops_ratio"] for r in cell)
                lines.append(f"| {role} | {method} | {flops:.3f} | {_mean_std(accs['one-shot'])} | "
                             f"{_mean_std(accs['iterative'])} | {_paired(diff)} |")
        paired = []
        for method in methods if len(bases) == 2 else []:
            diffs = [seed_paired_differences(here, {"base": "sparse", "method": method, "mode": m},
                                        {"base": "plain", "method": method, "mode": m}) for m in MODES]
            if any(diffs):
                paired.append(f"| {method} | {_paired(diffs[0])} | {_paired(diffs[1])} |")
        if paired:
            lines += ["", "| sparse − plain | one-shot | iterative |", "|---|---|---|", *paired]
    targets = sorted({r["target"] for r in rows})
    pooled_modes = [d for t in targets for m in methods for b in bases for d in seed_paired_differences(
        rows, {"target": t, "base": b, "method": m, "mode": "iterative"}, {"target": t, "base": b, "method": m, "mode": "one-shot"})]
    pooled_bases = [d for t in targets for m in methods for mode in MODES for d in seed_paired_differences(
        rows, {"target": t, "base": "sparse", "method": m, "mode": mode}, {"target": t, "base": "plain", "method": m, "mode": mode})]
    lines += ["", "Paired differences (same method, target and seed), mean ± standard error (count), over every cell: "
              f"iterative − one-shot {_paired(pooled_modes)}"
              + (f"; sparse − plain {_paired(pooled_bases)}." if len(bases) == 2 else ".")]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- main
def main(cfg: Config) -> dict[str, Any]:
    bases = check(cfg)
    torch.set_num_threads(cfg.threads)
    set_training_device(cfg.device)
    arch = bases["plain"]["payload"]["arch"]
    path = Path(cfg.out_dir) / f"{cfg.name or f'sparsity_{arch}'}.json"
    cache: dict[tuple, DataSplits] = {}
    tasks: dict[str, tuple[PruningTask, ConditionalPolicy | None]] = {}
    for role, base in bases.items():
        print(f"{role} base {base['checkpoint']}" + (f", policy {base['policy']}" if base["policy"] else ""), flush=True)
        tasks[role] = base_task(base, base_splits(base["payload"], cfg, cache), cfg)
    fingerprints = {role: fingerprint(task.model) for role, (task, _) in tasks.items()}
    if len(set(fingerprints.values())) < len(fingerprints):
        raise AutopruneError("--plain and --sparse are the same model: give the sparse-trained one as --sparse")
    setup = {"bases": {role: {"fingerprint": fingerprints[role], "policy": bases[role]["policy"],
                              "settings": task.settings.to_dict()} for role, (task, _) in tasks.items()},
             "steps": cfg.steps, "epochs_per_step": cfg.epochs_per_step,
             "recipe": asdict(FinetuneRecipe(epochs=cfg.epochs_per_step, precision=cfg.precision)),
             "finetune_images": cfg.finetune_images, "eval_images": cfg.eval_images,
             "allow_extrapolation": cfg.allow_extrapolation}
    rows = load(path, cfg, setup)
    results = {"format": FORMAT, "arch": arch, "targets": sorted({float(t) for t in cfg.targets} | {r["target"] for r in rows}),
               "methods": list(dict.fromkeys([*(r["method"] for r in rows), *cfg.methods])),
               "seeds": sorted(set(cfg.seeds) | {r["seed"] for r in rows}), "setup": setup, "rows": rows,
               "bases": {role: {"checkpoint": bases[role]["checkpoint"], "fingerprint": fingerprints[role],
                                "test_accuracy": task.source.get("test_accuracy"), "policy": bases[role]["policy"],
                                "policy_target_range": list(policy.target_range) if policy is not None else None,
                                "settings": task.settings.to_dict()} for role, (task, policy) in tasks.items()}}
    done = {(r["base"], r["method"], r["target"], r["mode"], r["seed"]) for r in rows}
    cells = [(role, method, float(target), mode, seed) for seed in dict.fromkeys(cfg.seeds)
             for target in dict.fromkeys(cfg.targets) for method in dict.fromkeys(cfg.methods)
             for role in tasks if method != "policy" or tasks[role][1] is not None for mode in MODES]
    pending = [c for c in cells if c not in done]
    print(f"{len(pending)} rows to run ({len(cells)} cells, {len(cells) - len(pending)} done) -> {path}", flush=True)
    start = time.perf_counter()
    for i, (role, method, target, mode, seed) in enumerate(pending, 1):
        task, policy = tasks[role]
        steps = cfg.steps if mode == "iterative" else 1
        recipe = FinetuneRecipe(epochs=cfg.epochs_per_step * (1 if steps > 1 else cfg.steps), precision=cfg.precision)
        seed_everything(seed)
        t0 = time.perf_counter()
        result = prune_to_target(task, target, policy=policy if method == "policy" else None,
                                 method=None if method == "policy" else method, recipe=recipe, seed=seed,
                                 allow_extrapolation=cfg.allow_extrapolation, iterative=steps)
        s = result.summary
        low, high = policy.target_range if method == "policy" and policy is not None else (0.0, 1.0)
        rows.append({"base": role, "method": method, "target": target, "mode": mode, "seed": seed,
                     "steps": s["iterative"], "epochs_per_step": recipe.epochs, "total_epochs": s["total_finetune_epochs"],
                     "achieved_flops_ratio": s["achieved_flops_ratio"], "params": s["params"],
                     "dense_params": s["dense_params"], "kept_channels": task.space.keep_counts(result.strategy).tolist(),
                     "proxy_accuracy": s["proxy_accuracy"], "test_accuracy_before_finetune": s["test_accuracy_before_finetune"],
                     "test_accuracy": s["test_accuracy"],
                     "step_log": [{k: st[k] for k in ("achieved_flops_ratio", "test_accuracy_before_finetune", "test_accuracy")}
                                  for st in s["steps"]],
                     "extrapolated": not low - 1e-9 <= target <= high + 1e-9,
                     "seconds": round(time.perf_counter() - t0, 1)})
        save(path, cfg, results)
        elapsed = time.perf_counter() - start
        print(f"[{i}/{len(pending)}] {role:<6} {method:<10} target {target:g} {mode:<9} seed {seed}: FLOPs "
              f"{s['achieved_flops_ratio']:.3f}, before {s['test_accuracy_before_finetune']:.2f}% -> "
              f"{s['test_accuracy']:.2f}% after {s['total_finetune_epochs']} epochs ({rows[-1]['seconds']:.0f} s; "
              f"ETA {hms(elapsed / i * (len(pending) - i))})", flush=True)
    save(path, cfg, results)
    print(markdown(results))
    return results


if __name__ == "__main__":
    run_script(main, Config)
