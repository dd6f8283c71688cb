"""Sub-commands ``search``, ``prune`` and ``evaluate`` (added to the ``autoprune`` parser by ``autoprune.cli``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from autoprune.cli_common import command, data_args, precision_arg
from autoprune.errors import AutopruneError


def parse_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(":"))
    except ValueError:
        raise AutopruneError(f"--targets must look like LOW:HIGH (e.g. 0.2:0.9), got {text!r}") from None
    return low, high


def parse_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise AutopruneError(f"--targets must be a comma-separated list (e.g. 0.3,0.5,0.7), got {text!r}") from None


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="train one conditional pruning policy for a base model")
    p.add_argument("--checkpoint", required=True, help="base model file (from `autoprune train`)")
    data_args(p, default=None)
    p.add_argument("--targets", default="0.2:0.9", help="target range LOW:HIGH sampled during the search")
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--warmup", type=int, help="random-action episodes first (default: min(100, episodes/3))")
    p.add_argument("--agent", default="ddpg", help="ddpg, td3, sac or ppo")
    p.add_argument("--criterion", default="l1", help="channel importance criterion (see `autoprune criteria`)")
    p.add_argument("--reward", default="relative", help="relative, accuracy or error_log_flops")
    p.add_argument("--proxy-images", type=int, help="validation images the proxy scores (default: all)")
    p.add_argument("--round-to", type=int, default=1, help="keep channel counts that are multiples of this (e.g. 8)")
    p.add_argument("--proxy-steps", type=int, default=0,
                   help="SGD steps on training batches before the proxy scores a strategy (default 0: adaptive BN only)")
    p.add_argument("--no-fill-budget", action="store_true",
                   help="end episodes where the action wall leaves them, instead of spending the unused budget")
    p.add_argument("--prior", choices=["global", "uniform"], default="global",
                   help="the allocation an action of 0 gives: a global importance ranking (default) or one uniform ratio")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=25, help="episodes between saved checkpoints")
    p.add_argument("--out", required=True, help="policy directory")
    p.add_argument("--resume", action="store_true", help="continue the search saved in --out")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("prune", help="prune a model at any target with a trained policy")
    p.add_argument("--policy", required=True, help="policy directory (from `autoprune search`)")
    p.add_argument("--checkpoint", required=True, help="the base model the policy was trained for")
    p.add_argument("--target", type=float, required=True, help="FLOPs ratio to keep, e.g. 0.37")
    data_args(p, default=None)
    p.add_argument("--best-of", type=int, default=1,
                   help="score K rollouts (1 deterministic + K-1 noisy) and the search's best strategies for this target on the proxy")
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.01, help="fine-tune learning rate")
    p.add_argument("--distill", action="store_true", help="fine-tune with knowledge distillation from the base model")
    precision_arg(p, "fine-tune")
    p.add_argument("--allow-extrapolation", action="store_true", help="allow a target outside the trained range")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="pruned model file (.pt); a .json summary is written beside it")

    p = sub.add_parser("evaluate", help="compare a policy with baselines across targets")
    p.add_argument("--checkpoint", required=True, help="base model file")
    p.add_argument("--policy", help="policy directory (omit to compare baselines only)")
    p.add_argument("--targets", default="0.3,0.5,0.7", help="comma-separated targets")
    p.add_argument("--baselines", default="uniform", help="comma-separated: uniform,global,random,ga,sensitivity,amc")
    p.add_argument("--baseline-episodes", type=int, default=100, help="proxy evaluations per target for searching baselines")
    p.add_argument("--policy-best-of", type=int, default=1, help="as prune --best-of: proxy-scored candidates per target")
    data_args(p, default=None)
    p.add_argument("--criterion", help="importance criterion (default: the policy's, else l1)")
    p.add_argument("--proxy-images", type=int)
    p.add_argument("--proxy-steps", type=int, help="SGD steps before the proxy scores (default: the policy's, else 0)")
    p.add_argument("--round-to", type=int, help="channel multiple for baselines (default: the policy's, else 1)")
    p.add_argument("--prior", choices=["global", "uniform"],
                   help="prior of the searching baselines' offset actions, e.g. AMC (default: the policy's, else global)")
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--finetune-seeds", type=int, metavar="N",
                   help="fine-tune every pruned model N times (seeds seed..seed+N-1) and report mean and standard "
                        "deviation (default 1)")
    precision_arg(p, "fine-tunes")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tune learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="report directory (rewritten after every row)")
    p.add_argument("--resume", action="store_true", help="keep the rows already in --out/results.json and compute the rest")


@command("search")
def cmd_search(args: argparse.Namespace) -> None:
    from autoprune.agents.conditional import SearchConfig, search

    low, high = parse_range(args.targets)
    config = SearchConfig(agent=args.agent, episodes=args.episodes, warmup_episodes=args.warmup, target_low=low,
                          target_high=high, criterion=args.criterion, reward=args.reward, proxy_images=args.proxy_images,
                          round_to=args.round_to, fill_budget=not args.no_fill_budget, prior=args.prior,
                          proxy_finetune_steps=args.proxy_steps, seed=args.seed, checkpoint_every=args.checkpoint_every)
    policy = search(args.out, config, checkpoint=args.checkpoint, data=args.data, data_dir=args.data_dir,
                    val_size=args.val_size, resume=args.resume, progress=not args.no_progress)
    print(f"policy saved to {args.out}: {policy.meta['episodes']} episodes in {policy.meta['search_seconds'] / 60:.1f} min")
    for t in (low, (low + high) / 2, high):
        s = policy.strategy(t)
        print(f"  target {t:.2f}: FLOPs ratio {policy.space.flops_ratio(s):.3f}, keep ratios {' '.join(f'{r:.2f}' for r in s)}")


@command("prune")
def cmd_prune(args: argparse.Namespace) -> None:
    import numpy as np

    from autoprune.agents.policy import load_policy
    from autoprune.checkpoint import load_model, save_model
    from autoprune.data import load_splits
    from autoprune.envs.proxy import AccuracyProxy
    from autoprune.pruning import count_params
    from autoprune.training import evaluate
    from autoprune.utils import seed_everything, versions, write_text_atomic

    out = Path(args.out)
    seed_everything(args.seed)
    base, payload = load_model(args.checkpoint)
    policy = load_policy(args.policy, model=base)
    meta = payload["meta"]
    splits = load_splits(args.data or meta.get("dataset", policy.meta["dataset"]), args.data_dir,
                         args.val_size or meta.get("val_size"))
    space = policy.space
    assert space is not None
    proxy = AccuracyProxy(splits, policy.meta.get("proxy_images"))

    def score(strategy: np.ndarray) -> float:
        counts = space.keep_counts(strategy)
        return proxy(tuple(counts.tolist()), lambda: space.apply(strategy, policy.meta["criterion"])).accuracy

    if args.best_of > 1:
        strategy, best_score, _ = policy.best_strategy(args.target, score, args.best_of, args.seed, args.allow_extrapolation)
    else:
        strategy = policy.strategy(args.target, args.allow_extrapolation)
        best_score = score(strategy)
    pruned = space.apply(strategy, policy.meta["criterion"])
    proxy.score(pruned)  # adaptive BN: the saved model carries recalibrated statistics
    test_acc = evaluate(pruned, splits.test)
    summary = {
        "target": args.target, "achieved_flops_ratio": space.flops_ratio(strategy), "params": count_params(pruned),
        "dense_params": count_params(base), "proxy_accuracy": best_score, "test_accuracy": test_acc,
        "test_accuracy_before_finetune": test_acc, "strategy": np.round(strategy, 4).tolist(),
        "channels": {g.root: [int(k), int(g.channels)] for g, k in zip(space.groups, space.keep_counts(strategy))},
        "best_of": args.best_of, "finetune_epochs": args.finetune_epochs, "distill": args.distill,
        "policy": str(args.policy), "base_checkpoint": str(args.checkpoint),
        "seed": args.seed, "versions": versions(),
    }
    if args.finetune_epochs > 0:
        from autoprune.deploy.finetune import finetune

        finetune(pruned, splits, args.finetune_epochs, teacher=base if args.distill else None, lr=args.lr, seed=args.seed,
                 precision=args.precision or "fp32")
        summary["test_accuracy"] = evaluate(pruned, splits.test)
    save_model(out, pruned, payload["arch"], payload["num_classes"],
               dict(summary, kind="pruned", dataset=splits.train.name, val_size=splits.val_size,
                    input_shape=list(splits.input_shape)), in_channels=payload.get("in_channels", 3))
    write_text_atomic(out.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    print(f"target {args.target:.3f} -> achieved FLOPs ratio {summary['achieved_flops_ratio']:.3f}; "
          f"params {summary['params']:,} of {summary['dense_params']:,}")
    print(f"proxy accuracy {summary['proxy_accuracy']:.4f}; test accuracy {test_acc:.2f}%"
          + (f" -> {summary['test_accuracy']:.2f}% after {args.finetune_epochs} fine-tune epochs" if args.finetune_epochs else ""))
    print("channels per group: " + ", ".join(f"{root} {k}/{c}" for root, (k, c) in summary["channels"].items()))
    print(f"saved {out} and {out.with_suffix('.json')}")


@command("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> None:
    from autoprune.agents.baselines import list_searchers
    from autoprune.agents.common import fingerprint
    from autoprune.agents.evaluate import evaluate_methods, markdown_table, write_report
    from autoprune.agents.policy import load_policy
    from autoprune.checkpoint import load_model
    from autoprune.envs import ChannelPruningEnv

    targets = parse_list(args.targets)
    baselines = [b for b in args.baselines.split(",") if b.strip()]
    unknown = [b for b in baselines if b not in list_searchers()]
    if unknown:
        raise AutopruneError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(list_searchers())}")
    if args.finetune_seeds is not None and args.finetune_seeds < 1:
        raise AutopruneError(f"--finetune-seeds must be >= 1, got {args.finetune_seeds}")
    if args.finetune_seeds is not None and args.finetune_seeds > 1 and args.finetune_epochs < 1:
        raise AutopruneError("--finetune-seeds needs --finetune-epochs >= 1: there is nothing to repeat without a fine-tune")
    model, payload = load_model(args.checkpoint)
    policy = load_policy(args.policy, model=model) if args.policy else None
    criterion = args.criterion or (policy.meta["criterion"] if policy else "l1")
    low = min(targets)
    env = ChannelPruningEnv(model=model, data=args.data or payload["meta"].get("dataset"), data_dir=args.data_dir,
                            val_size=args.val_size or payload["meta"].get("val_size"), criterion=criterion,
                            target_range=(low, max(targets)), proxy_images=args.proxy_images or
                            (policy.meta.get("proxy_images") if policy else None),
                            round_to=args.round_to or (policy.meta.get("round_to", 1) if policy else 1),
                            fill_budget=policy.meta.get("fill_budget", False) if policy else True,
                            proxy_finetune_steps=args.proxy_steps if args.proxy_steps is not None else
                            (policy.meta.get("proxy_finetune_steps", 0) if policy else 0),
                            prior=args.prior or (policy.meta.get("prior", "uniform") if policy else "global"),
                            space=policy.space if policy else None)
    config = {k: v for k, v in vars(args).items() if k not in ("func", "resume", "threads", "debug")}
    config["base_fingerprint"] = fingerprint(model)  # the same path may hold a retrained model
    done = []
    previous = Path(args.out) / "results.json"
    if args.resume and previous.exists():
        saved = json.loads(previous.read_text())
        saved_config = saved.get("config", {})
        # an option added in a later version reads as its default (None) in older reports
        if any(saved_config.get(k) != config.get(k) for k in {*saved_config, *config}):
            raise AutopruneError(f"{previous} was written with other settings or another base model; "
                                 "use the same ones to --resume, or write to a new --out")
        done = saved["rows"]
        print(f"resuming: {len(done)} rows already in {previous}")
    rows = evaluate_methods(env, targets, policy, baselines, args.baseline_episodes, args.finetune_epochs, args.lr,
                            args.seed, policy_best_of=args.policy_best_of, finetune_seeds=args.finetune_seeds or 1,
                            finetune_precision=args.precision or "fp32", done=done, on_row=lambda rows: write_report(rows, args.out, config))
    write_report(rows, args.out, config)
    print(markdown_table(rows))
    print(f"report written to {args.out} (results.json, results.csv, results.md, pareto.png)")
