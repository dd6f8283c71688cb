"""The yardstick of proxy fidelity (issue #13): competitive ResNet-20 strategies and their fine-tuned accuracy.

Per target (0.3, 0.5, 0.7) ``per_target`` distinct strategies (by kept-channel counts), all within
[target - tolerance, target]: the committed policy's deterministic and noisy rollouts, then the
strategies of the ``sources`` searchers (global ranking, uniform, sensitivity, a GA and AMC with
few episodes), then small perturbations of those (keep ratios times log-normal noise, passed back
through the budget rule: the action wall and the budget fill of ``PruningTask.episode``) until the
target has ``per_target``. Each is then fine-tuned as ``evaluate`` does it (the default recipe,
distilling from the base model) once per seed; the record per strategy holds target, source, keep
ratios, kept counts, FLOPs ratio, test accuracy before the fine-tune (BN re-estimated), the
fine-tuned test accuracy per seed and their mean.

The strategies are generated once and saved before any fine-tune; the file is rewritten (atomically)
after every fine-tune, and ``--resume`` fine-tunes only what is missing from the same strategies.
Fine-tunes run seed by seed (every strategy under the first seed, then the next seed), the targets
taken in turn, so a partial file soon covers every strategy of every target with one seed: proxies
can be scored on it long before the second seed is done. ``experiments.score_proxies`` scores proxies against it.

    python -m experiments.fidelity_data --threads 2
    python -m experiments.fidelity_data --threads 2 --resume
    python -m experiments.fidelity_data --per-target 2 --sources global uniform --limit 2 --finetune-images 500 --eval-images 500 --threads 1 --out /tmp/fidelity_smoke.json
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.errors import AutopruneError
from autoprune.recovery import FinetuneRecipe, calibration_batches, finetuned_test_accuracy
from autoprune.task import PruningSettings, PruningTask
from autoprune.training import evaluate, recalibrate_bn
from autoprune.utils import hms, read_json
from experiments.common import ProxyTaskConfig, run_script, save_report, smoke_splits, spearman

FORMAT = "autoprune.fidelity/1"
GENERATION_FIELDS = ("policy", "targets", "per_target", "sources", "rollouts", "rollout_noise", "search_episodes",
                     "amc_episodes", "perturb_noise", "proxy_images", "seed")  # what made the strategies


@dataclass
class Config(ProxyTaskConfig):
    policy: str = "policies/resnet20-cifar10"  # "": no policy rollouts
    targets: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])
    per_target: int = 20  # strategies per target (more when the searches alone find more)
    sources: list[str] = field(default_factory=lambda: ["global", "uniform", "sensitivity", "ga", "amc"])  # searchers
    rollouts: int = 6  # policy rollouts per target: the deterministic one, then noisy ones
    rollout_noise: float = 0.1  # std of the Gaussian noise on the policy's actions
    search_episodes: int = 48  # proxy evaluations of the ga (and random) searches per target
    amc_episodes: int = 30  # episodes of the AMC search per target
    perturb_noise: float = 0.15  # std of the log-normal factor on keep ratios of the perturbations
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # fine-tune seeds
    finetune_epochs: int = 1
    precision: str = "fp32"  # of the fine-tune: fp32 (evaluate's default) or bf16
    finetune_images: int = 0  # > 0: fine-tune on a fixed random subset of this many training images (smoke runs)
    eval_images: int = 0  # > 0: only the first N validation and test images (smoke runs)
    limit: int = 0  # > 0: fine-tune only the first N strategies (in run order)
    resume: bool = False  # keep the strategies and fine-tunes of an existing file, do what is missing
    overwrite: bool = False  # start afresh over an existing file that holds fine-tunes
    threads: int = 2
    seed: int = 0
    out: str = "docs/results/fidelity_resnet20.json"


# ---------------------------------------------------------------------------------------- strategies
def budget_rule(task: PruningTask, target: float, ratios: np.ndarray) -> np.ndarray:
    """``ratios`` passed through the task's episode: each group asks for its ratio, the action wall
    clamps it so the budget can still be met, and the budget fill spends what is left."""
    episode = task.episode()
    episode.reset(target)
    while not episode.done:
        episode.step(episode.action_for(float(ratios[episode.index])))
    return episode.strategy


def searched(task: PruningTask, policy: Any, target: float, cfg: Config) -> list[tuple[str, np.ndarray]]:
    """(source, keep ratios) of the policy's rollouts and of every searcher in ``cfg.sources`` at ``target``."""
    from autoprune.agents.baselines import create_searcher

    found: list[tuple[str, np.ndarray]] = []
    if policy is not None and cfg.rollouts > 0:
        rollouts = policy.rollouts(target, cfg.rollouts, noise=cfg.rollout_noise, seed=cfg.seed, allow_extrapolation=True)
        found += [("policy" if i == 0 else "policy-noisy", s) for i, s in enumerate(rollouts)]
    for name in cfg.sources:
        t0 = time.perf_counter()
        episodes = cfg.amc_episodes if name == "amc" else cfg.search_episodes
        found.append((name, create_searcher(name).search(task, target, episodes, cfg.seed).strategy))
        print(f"  target {target:.2f}: {name} searched in {time.perf_counter() - t0:.0f} s", flush=True)
    return found


def generate(task: PruningTask, policy: Any, cfg: Config) -> list[dict[str, Any]]:
    """The strategies of every target, deduplicated by kept counts, each within [target - tolerance, target]."""
    rng = np.random.default_rng(cfg.seed)
    return [row for target in cfg.targets for row in generate_target(task, policy, float(target), cfg, rng)]


def generate_target(task: PruningTask, policy: Any, target: float, cfg: Config,
                    rng: np.random.Generator) -> list[dict[str, Any]]:
    """The searched strategies at ``target``, then perturbations of them up to ``cfg.per_target``."""
    space, tolerance = task.space, task.settings.tolerance
    chosen: list[dict[str, Any]] = []
    seen: set[tuple[int, ...]] = set()

    def add(source: str, strategy: np.ndarray, parent: str | None = None) -> None:
        if space.flops_ratio(strategy) < target - tolerance:  # e.g. sensitivity's allocation: spend the rest
            strategy = space.fill(strategy, target)
        counts = space.keep_counts(strategy)
        ratio = space.flops_ratio(counts / space.channels)
        key = tuple(int(c) for c in counts)
        if key in seen or not target - tolerance - 1e-9 <= ratio <= target + 1e-12:
            return
        seen.add(key)
        chosen.append({"id": f"{target:.2f}-{len(chosen):02d}", "target": target, "source": source, "parent": parent,
                       "keep_ratios": np.round(counts / space.channels, 6).tolist(), "kept_channels": list(key),
                       "flops_ratio": ratio})

    for source, strategy in searched(task, policy, target, cfg):
        add(source, strategy)
    parents = list(chosen)
    if not parents:
        raise SystemExit(f"no strategy found for target {target:g}")
    tries = 0
    while len(chosen) < cfg.per_target and tries < 200 * cfg.per_target:
        tries += 1
        parent = parents[int(rng.integers(len(parents)))]
        noisy = np.asarray(parent["keep_ratios"]) * np.exp(rng.normal(0.0, cfg.perturb_noise, space.num_groups))
        add(f"perturbed-{parent['source']}", budget_rule(task, target, np.clip(noisy, task.settings.min_keep, 1.0)),
            parent["id"])
    print(f"target {target:.2f}: {len(parents)} searched + {len(chosen) - len(parents)} perturbed strategies", flush=True)
    return chosen


def run_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The strategies with the targets taken in turn (the first of each target, then the second, ...)."""
    by_target: dict[float, list[dict[str, Any]]] = {}
    for row in rows:
        by_target.setdefault(row["target"], []).append(row)
    order = []
    for k in range(max(len(v) for v in by_target.values())):
        order += [v[k] for v in by_target.values() if k < len(v)]
    return order


# ---------------------------------------------------------------------------------------- the file
def finetune_record(cfg: Config) -> dict[str, Any]:
    """What the fine-tuned accuracies depend on besides strategy and seed: a resumed run must match it."""
    return {"recipe": asdict(FinetuneRecipe(epochs=cfg.finetune_epochs, precision=cfg.precision)),
            "finetune_images": cfg.finetune_images, "eval_images": cfg.eval_images}


def save(path: Path, cfg: Config, results: dict[str, Any]) -> None:
    save_report(path, cfg, results, summary(results), module="experiments.fidelity_data")


def summary(results: dict[str, Any]) -> str:
    """A short Markdown summary: strategies and fine-tunes per target, the spread of fine-tuned accuracy,
    how far the best strategy is above global ranking's and uniform's (the most any search could gain over
    them among these strategies), and how well two fine-tune seeds agree (the noise floor of any proxy's
    fidelity)."""
    rows, seeds = results["strategies"], [str(s) for s in results["seeds"]]
    lines = [f"Fine-tuned test accuracy (%) of competitive {results['arch']} strategies (`{results['checkpoint']}`), "
             f"seeds {', '.join(seeds)}, recipe {results['finetune']['recipe']['epochs']} epoch(s) as `evaluate`; "
             "headroom: the best strategy's mean minus global ranking's and uniform's strategy's (points)", "",
             "| target | strategies | fine-tuned (all seeds) | sources | fine-tuned accuracy min / median / max | "
             "headroom over global / uniform | seed-to-seed Spearman ρ | mean abs seed difference |",
             "|---|---|---|---|---|---|---|---|"]
    for target in results["targets"]:
        mine = [r for r in rows if r["target"] == target]
        done = [r for r in mine if r["finetuned"]]
        full = [r for r in mine if all(s in r["finetuned"] for s in seeds)]
        sources: dict[str, int] = {}
        for r in mine:
            name = "perturbed" if r["source"].startswith("perturbed") else r["source"]
            sources[name] = sources.get(name, 0) + 1
        means = [r["finetuned_test_accuracy"] for r in done]
        spread = (f"{min(means):.2f} / {np.median(means):.2f} / {max(means):.2f}" if means else "–")
        headroom = " / ".join(next((f"{max(means) - r['finetuned_test_accuracy']:+.2f}" for r in done
                                    if r["source"] == source), "–") for source in ("global", "uniform"))
        rho, diff = "–", "–"
        if len(seeds) > 1 and len(full) >= 3:
            a, b = ([r["finetuned"][s] for r in full] for s in seeds[:2])
            value = spearman(a, b)
            rho = "–" if value is None else f"{value:.2f}"
            diff = f"{np.mean(np.abs(np.subtract(a, b))):.2f}"
        lines.append(f"| {target:.2f} | {len(mine)} | {len(full)} | "
                     f"{', '.join(f'{k} {v}' for k, v in sources.items())} | {spread} | {headroom} | {rho} | {diff} |")
    return "\n".join(lines)


def read_yardstick(path: str | Path) -> dict[str, Any]:
    """The results of a file written by this script, or one clear error."""
    loaded = read_json(path, "fidelity data")
    if not isinstance(loaded, dict) or not isinstance(loaded.get("results"), dict) or "strategies" not in loaded["results"]:
        raise AutopruneError(f"{path} is not a file of experiments.fidelity_data (no strategies)")
    return loaded["results"]


def seed_means(rows: list[dict[str, Any]], seeds: list[Any]) -> tuple[list[str], dict[str, float]]:
    """The seeds every one of ``rows`` has been fine-tuned with, and each row's mean accuracy over them: a
    file part-way through a seed is measured on the seeds before it, so that every mean is over the same."""
    common = [str(s) for s in seeds if all(str(s) in r["finetuned"] for r in rows)]
    return common, ({r["id"]: float(np.mean([r["finetuned"][s] for s in common])) for r in rows} if common else {})


def load(path: Path, cfg: Config) -> dict[str, Any] | None:
    """The results of an existing file to continue, or None to start afresh."""
    if not path.is_file():
        return None
    results = read_yardstick(path)
    if cfg.resume:
        return results
    if any(r["finetuned"] for r in results.get("strategies", [])) and not cfg.overwrite:
        raise SystemExit(f"{path} holds fine-tuned strategies: pass --resume to continue it or --overwrite to start afresh")
    return None


# ---------------------------------------------------------------------------------------- main
def main(cfg: Config) -> None:
    from autoprune.agents.common import fingerprint

    torch.set_num_threads(cfg.threads)
    path = Path(cfg.out)
    results = load(path, cfg)
    settings = cfg.settings()
    policy = None
    if cfg.policy and results is None:
        from autoprune.agents import load_policy

        policy = load_policy(cfg.policy)
        settings = policy.settings.replace(proxy_images=cfg.proxy_images)
    if results is not None:
        settings = PruningSettings.from_dict(results["settings"])
    task = PruningTask.from_checkpoint(cfg.checkpoint, settings, data_dir=cfg.data_dir or None)
    record = finetune_record(cfg)
    if results is None:
        if policy is not None:
            policy.bind(task.space, scores=task.scores)
        print(f"generating strategies at targets {', '.join(f'{t:g}' for t in cfg.targets)}", flush=True)
        results = {"format": FORMAT, "checkpoint": cfg.checkpoint, "arch": task.source.get("arch"),
                   "base_fingerprint": fingerprint(task.model), "base_test_accuracy": task.source.get("test_accuracy"),
                   "settings": task.settings.to_dict(), "targets": [float(t) for t in cfg.targets],
                   "policy": cfg.policy or None, "seeds": list(cfg.seeds), "finetune": record,
                   "generation": {k: getattr(cfg, k) for k in GENERATION_FIELDS},
                   "strategies": [{**r, "test_accuracy": None, "finetuned": {}, "finetuned_test_accuracy": None,
                                   "finetune_seconds": {}} for r in generate(task, policy, cfg)]}
        save(path, cfg, results)
    else:
        if results["base_fingerprint"] != fingerprint(task.model):
            raise SystemExit(f"{path} was made from another base model than {cfg.checkpoint}")
        if results["finetune"] != record:
            raise SystemExit(f"{path} was fine-tuned with other settings ({results['finetune']}); resume with those")
        results["seeds"] = sorted(set(results["seeds"]) | set(cfg.seeds))
        print(f"resuming {path}: {len(results['strategies'])} strategies", flush=True)

    splits = task.splits
    tuning = smoke_splits(splits, cfg.finetune_images, cfg.eval_images, cfg.seed)
    recipe = FinetuneRecipe(epochs=cfg.finetune_epochs, precision=cfg.precision)
    calib = calibration_batches(splits.train, seed=0)  # as evaluate's test accuracy before the fine-tune

    order = run_order(results["strategies"])
    if cfg.limit > 0:
        order = order[: cfg.limit]
    pending = [(row, seed) for seed in cfg.seeds for row in order if str(seed) not in row["finetuned"]]
    print(f"{len(pending)} fine-tunes to run ({len(order)} strategies x {len(cfg.seeds)} seeds, "
          f"{len(order) * len(cfg.seeds) - len(pending)} done)", flush=True)
    start = time.perf_counter()
    for k, (row, seed) in enumerate(pending, 1):
        t0 = time.perf_counter()
        pruned = task.apply(np.asarray(row["kept_channels"]) / task.space.channels)
        if row["test_accuracy"] is None:
            before = copy.deepcopy(pruned)
            recalibrate_bn(before, calib)
            row["test_accuracy"] = evaluate(before, tuning.test)
        accuracy = finetuned_test_accuracy((pruned, seed), tuning, recipe, teacher=task.model)
        row["finetuned"][str(seed)] = accuracy
        row["finetune_seconds"][str(seed)] = round(time.perf_counter() - t0, 1)
        row["finetuned_test_accuracy"] = float(np.mean(list(row["finetuned"].values())))
        save(path, cfg, results)
        elapsed = time.perf_counter() - start
        eta = elapsed / k * (len(pending) - k)
        print(f"[{k}/{len(pending)}] {row['id']} {row['source']:<22} FLOPs {row['flops_ratio']:.3f} seed {seed}: "
              f"before {row['test_accuracy']:.2f}% fine-tuned {accuracy:.2f}% ({time.perf_counter() - t0:.0f} s; "
              f"elapsed {hms(elapsed)}, ETA {hms(eta)})", flush=True)
    save(path, cfg, results)
    print(summary(results))


if __name__ == "__main__":
    run_script(main, Config)
