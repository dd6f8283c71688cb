"""Sub-commands ``search``, ``prune`` and ``evaluate``: parse, call one library function, print."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from autoprune.cli.common import (
    RECIPE_FLAGS,
    SETTING_FLAGS,
    command,
    data_args,
    parse_list,
    parse_names,
    parse_range,
    recipe_args,
    recipe_from,
    seed_arg,
    settings_args,
    settings_from,
    workers_args,
)
from autoprune.errors import AutopruneError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="train one conditional pruning policy for a base model (or several)")
    p.add_argument("--checkpoint", required=True, action="append",
                   help="base model file (from `autoprune train`); repeat it to search one policy on several models "
                        "(each episode draws one; needs --observation transferable, the default then)")
    data_args(p, default=None)
    p.add_argument("--targets", help="target range LOW:HIGH sampled during the search (default 0.2:0.9, or the "
                                     "--init-policy's)")
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--warmup", type=int, help="random-action episodes first (default: min(100, episodes/3); "
                                              "0 with --init-policy)")
    p.add_argument("--agent", help="ddpg (default), td3, sac or ppo (default with --init-policy: its agent)")
    p.add_argument("--init-policy", metavar="DIR",
                   help="start from this trained policy's network (same agent and observation set) to adapt it to "
                        "the --checkpoint model(s) in a few episodes; its settings and target range are the defaults")
    settings_args(p, "the library's")
    seed_arg(p)
    p.add_argument("--checkpoint-every", type=int, default=25, help="episodes between saved checkpoints")
    workers_args(p, "episodes (proxy evaluations) run at once, each in a Ray worker")
    p.add_argument("--threads-per-worker", type=int, default=1, help="torch threads (Ray CPUs) of each worker")
    p.add_argument("--out", required=True, help="policy directory")
    p.add_argument("--resume", action="store_true", help="continue the search saved in --out")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("prune", help="prune a model at any target with a trained policy or a baseline method")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--policy", help="policy directory (from `autoprune search`)")
    how.add_argument("--method", help="a baseline instead of a policy (see `autoprune methods`): uniform, global, "
                                     "tp-global, sensitivity, slimming, elasticity, gradient-threshold, random, ga, amc")
    p.add_argument("--checkpoint", required=True, help="the base model (for --policy: the one it was trained for)")
    p.add_argument("--target", type=float, required=True, help="FLOPs ratio to keep, e.g. 0.37")
    data_args(p, default=None)
    p.add_argument("--best-of", type=int, default=1,
                   help="with --policy: score K rollouts (1 deterministic + K-1 noisy) and the search's best strategies "
                        "for this target on the proxy")
    p.add_argument("--episodes", type=int, default=100, help="with a searching --method: proxy evaluations")
    settings_args(p, "the policy's, else the library's")
    recipe_args(p)
    p.add_argument("--allow-extrapolation", action="store_true", help="allow a target outside the trained range")
    p.add_argument("--transfer", action="store_true",
                   help="apply the policy to a model it was not searched on (another architecture or other weights)")
    p.add_argument("--iterative", type=int, default=1, metavar="K",
                   help="reach the target in K prune-fine-tune steps (--finetune-epochs each; default 1: one shot); "
                        "the channel counts shrink linearly to the policy's or method's strategy, the channels "
                        "re-chosen on the fine-tuned weights at every step")
    seed_arg(p)
    p.add_argument("--out", required=True, help="pruned model file (.pt); a .json summary is written beside it")

    p = sub.add_parser("evaluate", help="compare a policy with baselines across targets")
    p.add_argument("--checkpoint", required=True, help="base model file")
    p.add_argument("--policy", help="policy directory (omit to compare baselines only)")
    p.add_argument("--targets", default="0.3,0.5,0.7", help="comma-separated targets")
    p.add_argument("--baselines", default="uniform", help="comma-separated baseline methods (see `autoprune methods`)")
    p.add_argument("--baseline-episodes", type=int, default=100, help="proxy evaluations per target for searching baselines")
    p.add_argument("--policy-best-of", type=int, default=1, help="as prune --best-of: proxy-scored candidates per target")
    p.add_argument("--transfer", action="store_true", help="as prune --transfer: evaluate a policy on a model it was not "
                                                            "searched on")
    data_args(p, default=None)
    settings_args(p, "the policy's, else the library's")
    recipe_args(p)
    p.add_argument("--finetune-seeds", type=int, metavar="N",
                   help="fine-tune every pruned model N times (seeds seed..seed+N-1) and report mean and standard "
                        "deviation (default 1)")
    seed_arg(p)
    workers_args(p, "fine-tunes run at once, each in a Ray worker with one thread")
    p.add_argument("--out", required=True, help="report directory (rewritten after every row)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in --out/results.json and compute the rest; AMC's searches continue "
                        "from their last save in --out/searches/ (every 25 episodes)")

    p = sub.add_parser("report", help="join evaluate reports of several architectures into one table and figure")
    p.add_argument("reports", nargs="+", help="report directories written by `autoprune evaluate`")
    p.add_argument("--out", required=True, help="where cross_arch.md, cross_arch.json and cross_arch.png go")


@command("search")
def cmd_search(args: argparse.Namespace) -> None:
    from autoprune.agents.conditional import SearchConfig, search
    from autoprune.agents.policy import load_policy, read_policy
    from autoprune.envs.channel_pruning import SHARED_OBSERVATIONS
    from autoprune.task import PruningSettings
    from autoprune.utils import check_output_dir

    check_output_dir(args.out, "policy folder")
    checkpoints = args.checkpoint
    init = read_policy(args.init_policy)[0] if args.init_policy else None  # its agent, settings and range are defaults
    low, high = parse_range(args.targets) if args.targets else tuple(init["target_range"]) if init else (0.2, 0.9)
    settings = settings_from(args, PruningSettings.from_policy_meta(init) if init else None)
    if len(checkpoints) > 1 and args.observation is None and init is None and settings.observation not in SHARED_OBSERVATIONS:
        settings = settings.replace(observation=SHARED_OBSERVATIONS[0])
        print(f"{len(checkpoints)} base models: the agent sees the {SHARED_OBSERVATIONS[0]!r} observation "
              "(the same meaning on every model)")
    agent = args.agent or (init["agent"] if init else "ddpg")
    config = SearchConfig(agent=agent, episodes=args.episodes, warmup_episodes=args.warmup, target_low=low,
                          target_high=high, settings=settings, seed=args.seed,
                          checkpoint_every=args.checkpoint_every, workers=args.workers, address=args.address,
                          threads_per_worker=args.threads_per_worker, init_policy=args.init_policy)
    policy = search(args.out, config, checkpoint=checkpoints[0] if len(checkpoints) == 1 else checkpoints,
                    data=args.data, data_dir=args.data_dir, val_size=args.val_size, resume=args.resume,
                    progress=not args.no_progress)
    print(f"policy saved to {args.out}: {policy.meta['episodes']} episodes in {policy.meta['search_seconds'] / 60:.1f} min")
    bases = policy.meta.get("bases")
    for i, checkpoint in enumerate(checkpoints):
        if bases:  # one policy, several models: roll it out on each
            policy = load_policy(args.out, checkpoint=checkpoint)
            print(f"{bases[i].get('arch')} {checkpoint} ({bases[i]['episodes']} episodes):")
        for t in (low, (low + high) / 2, high):
            s = policy.strategy(t)
            print(f"  target {t:.2f}: FLOPs ratio {policy.space.flops_ratio(s):.3f}, keep ratios {' '.join(f'{r:.2f}' for r in s)}")


def _task(args: argparse.Namespace, policy_dir: str | None):  # type: ignore[no-untyped-def]
    """The base model's task under the policy's settings (or the library's) and the flags; and the policy."""
    from autoprune.agents.policy import load_policy, read_policy
    from autoprune.checkpoint import load_model
    from autoprune.data import load_splits
    from autoprune.task import PruningTask, importance_data, make_task

    if policy_dir is None:
        return make_task(checkpoint=args.checkpoint, data=args.data, data_dir=args.data_dir, val_size=args.val_size,
                         settings=settings_from(args)), None
    read_policy(policy_dir)  # a bad policy directory is reported before any data loads
    model, payload = load_model(args.checkpoint)
    meta = payload.get("meta", {})
    splits = load_splits(args.data or meta.get("dataset", "digits"), args.data_dir, args.val_size or meta.get("val_size"))
    policy = load_policy(policy_dir, model=model, data=importance_data(splits), transfer=args.transfer,
                         input_shape=splits.input_shape)
    settings = settings_from(args, policy.settings)
    scores = policy.scores if settings.criterion == policy.settings.criterion else None
    source = {"arch": payload["arch"], "num_classes": payload["num_classes"], "checkpoint": str(args.checkpoint),
              "test_accuracy": meta.get("test_accuracy")}
    space = policy.space if settings.round_to == policy.settings.round_to else None
    return PruningTask(model, splits, settings, space=space, scores=scores, source=source), policy


@command("prune")
def cmd_prune(args: argparse.Namespace) -> None:
    from autoprune.agents.baselines import list_searchers
    from autoprune.agents.query import prune_to_target
    from autoprune.checkpoint import save_model
    from autoprune.utils import check_output, seed_everything, versions, write_text_atomic

    if args.method is not None and args.method not in list_searchers():
        raise AutopruneError(f"unknown method {args.method!r}; choose one of {', '.join(list_searchers())}")
    if args.method is not None and args.transfer:
        raise AutopruneError("--transfer applies a policy to another model; it does not apply to --method")
    if args.method is not None and args.best_of != 1:
        raise AutopruneError("--best-of chooses among a policy's rollouts; it does not apply to --method")
    if args.iterative < 1:
        raise AutopruneError(f"--iterative must be >= 1 (prune-fine-tune steps), got {args.iterative}")
    if args.iterative > 1 and args.finetune_epochs < 1:
        raise AutopruneError(f"--iterative {args.iterative} needs --finetune-epochs >= 1: the epochs each step "
                             "fine-tunes for")
    if args.iterative > 1 and args.reconstruct:
        raise AutopruneError("--iterative > 1 cannot be combined with --reconstruct, which runs only when pruning "
                             "in one shot")
    recipe = recipe_from(args)
    out = check_output(args.out, "--out")
    seed_everything(args.seed)
    task, policy = _task(args, args.policy)
    result = prune_to_target(task, args.target, policy=policy, method=args.method, best_of=args.best_of,
                             episodes=args.episodes, recipe=recipe, seed=args.seed,
                             allow_extrapolation=args.allow_extrapolation, iterative=args.iterative)
    summary = dict(result.summary, policy=args.policy, base_checkpoint=str(args.checkpoint), versions=versions())
    if policy is not None and policy.transferred:
        summary["transferred_from"] = {"arch": policy.meta.get("arch"), "base_fingerprint": policy.meta["base_fingerprint"],
                                       "checkpoint": policy.meta.get("checkpoint")}
    splits = task.splits
    save_model(out, result.model, task.source["arch"], task.source["num_classes"],
               dict(summary, kind="pruned", dataset=splits.train.name, val_size=splits.val_size,
                    input_shape=list(splits.input_shape)), in_channels=splits.input_shape[0])
    write_text_atomic(out.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    how = f"policy {args.policy}" if policy is not None else f"method {args.method}"
    if policy is not None and policy.transferred:
        how += f", transferred from {policy.meta.get('arch')}"
    print(f"target {args.target:.3f} ({how}) -> achieved FLOPs ratio {summary['achieved_flops_ratio']:.3f}; "
          f"params {summary['params']:,} of {summary['dense_params']:,}")
    if summary["iterative"] > 1:
        steps = summary["steps"]
        print(f"proxy accuracy {summary['proxy_accuracy']:.4f}; test accuracy per step "
              + " -> ".join(f"{s['test_accuracy']:.2f}% (FLOPs {s['achieved_flops_ratio']:.3f})" for s in steps))
        print(f"{len(steps)} steps, total fine-tune epochs {summary['total_finetune_epochs']}")
    else:
        print(f"proxy accuracy {summary['proxy_accuracy']:.4f}; test accuracy {summary['test_accuracy_before_finetune']:.2f}%"
              + (f" -> {summary['test_accuracy']:.2f}% after {recipe.epochs} fine-tune epochs" if recipe else ""))
    print("channels per group: " + ", ".join(f"{root} {k}/{c}" for root, (k, c) in summary["channels"].items()))
    print(f"saved {out} and {out.with_suffix('.json')}")


@command("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> None:
    from autoprune.agents.baselines import list_searchers
    from autoprune.agents.common import fingerprint
    from autoprune.agents.evaluate import evaluate_methods, markdown_table, write_report
    from autoprune.agents.report import read_report
    from autoprune.task import PruningSettings
    from autoprune.utils import check_output_dir, describe_differences

    targets = parse_list(args.targets)
    baselines = parse_names(args.baselines, "--baselines", allow_empty=True)  # "": the policy alone
    if not baselines and args.policy is None:
        raise AutopruneError("nothing to evaluate: give --policy DIR, --baselines METHODS, or both")
    unknown = [b for b in baselines if b not in list_searchers()]
    if unknown:
        raise AutopruneError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(list_searchers())}")
    if args.policy is None and (args.policy_best_of != 1 or args.transfer):
        raise AutopruneError("--policy-best-of and --transfer apply to a policy: give --policy DIR, or drop them")
    check_output_dir(args.out, "report folder")
    if args.finetune_seeds is not None and args.finetune_seeds < 1:
        raise AutopruneError(f"--finetune-seeds must be >= 1, got {args.finetune_seeds}")
    if args.finetune_seeds is not None and args.finetune_seeds > 1 and args.finetune_epochs < 1:
        raise AutopruneError("--finetune-seeds needs --finetune-epochs >= 1: there is nothing to repeat without a fine-tune")
    recipe = recipe_from(args)
    task, policy = _task(args, args.policy)
    # where the fine-tunes run does not change the rows: a report may be resumed with other workers
    config = {k: v for k, v in vars(args).items() if k not in ("func", "resume", "threads", "debug", "workers", "address")}
    config["base_fingerprint"] = fingerprint(task.model)  # the same path may hold a retrained model
    config["settings"] = task.settings.to_dict()
    config["recipe"] = None if recipe is None else asdict(recipe)
    base = {"arch": task.source.get("arch"), "test_accuracy": task.source.get("test_accuracy")}
    done: list[dict] = []
    started: list[dict] = []
    previous = Path(args.out) / "results.json"
    if args.resume and previous.exists():
        saved = read_report(previous)
        saved_config = saved.get("config", {})
        if isinstance(saved_config.get("settings"), dict):  # a setting added later reads as its default
            saved_config["settings"] = PruningSettings.normalized(saved_config["settings"])
        # the settings and recipe are compared as resolved, not as typed; an option added in a later version
        # reads as its default (None) in older reports
        typed = {*SETTING_FLAGS, *RECIPE_FLAGS}
        saved_config, now = ({k: v for k, v in c.items() if k not in typed} for c in (saved_config, config))
        if any(saved_config.get(k) != now.get(k) for k in {*saved_config, *now}):
            raise AutopruneError(f"{previous} was written with other settings or another base model; use the same "
                                 f"ones to --resume, or write to a new --out ({describe_differences(saved_config, now)})")
        done, started = saved["rows"], saved.get("started", [])
        needed = {"method", "target", "kept_channels", "exact_strategy", "rebuild", "seed_accuracies"}
        if not isinstance(started, list) or not all(isinstance(r, dict) and needed <= r.keys() for r in started):
            raise AutopruneError(f"{previous} has damaged 'started' rows; delete that key to compute those rows again")
        print(f"resuming: {len(done)} rows already in {previous}"
              + (f", and {sum(len(r['seed_accuracies']) for r in started)} fine-tunes of {len(started)} more" if started else ""))
    searches = Path(args.out) / "searches"  # AMC's per-target searches in progress
    if not args.resume and searches.is_dir():
        shutil.rmtree(searches)  # a report started afresh searches afresh
    rows = evaluate_methods(task, targets, policy, baselines, baseline_episodes=args.baseline_episodes, recipe=recipe,
                            seed=args.seed,
                            policy_best_of=args.policy_best_of, finetune_seeds=args.finetune_seeds or 1, done=done,
                            started=started, on_save=lambda rows, started: write_report(rows, args.out, config, base, started),
                            workers=args.workers,
                            address=args.address, work_dir=searches)
    print(markdown_table(rows))
    if len(rows) == len(done):  # a finished report resumed: on_save never ran, its files (and date) stay as they are
        print(f"nothing left to compute: {args.out} is unchanged")
    else:  # on_save wrote the report after its last row
        print(f"report written to {args.out} (results.json, results.csv, results.md, pareto.png)")


@command("report")
def cmd_report(args: argparse.Namespace) -> None:
    from autoprune.agents.report import write_cross_report
    from autoprune.utils import check_output_dir

    check_output_dir(args.out, "report folder")
    reports = write_cross_report(args.reports, args.out)
    print((Path(args.out) / "cross_arch.md").read_text())
    print(f"{len(reports)} reports joined -> {args.out} (cross_arch.md, cross_arch.json, cross_arch.png)")
