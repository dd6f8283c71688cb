"""Sub-commands about base models: ``train``, ``demo``, ``info``, ``models``, ``criteria``."""

from __future__ import annotations

import argparse

from autoprune.cli.common import command, data_args, precision_arg, seed_arg, settings_args, settings_from
from autoprune.errors import AutopruneError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """``train``, ``demo``, ``info``, ``models`` and ``criteria``."""
    p = sub.add_parser("train", help="train a base model")
    p.add_argument("--arch", required=True, help="zoo name (see `autoprune models`) or tv:<torchvision name>")
    data_args(p)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.15, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=["onecycle", "cosine"], default="onecycle")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--swa-epochs", type=int, default=0,
                   help="after the schedule, average the weights over this many constant-lr epochs (SWA)")
    p.add_argument("--swa-lr", type=float, default=0.05, help="learning rate during weight averaging")
    precision_arg(p)
    p.add_argument("--sparsity", metavar="METHOD",
                   help="sparsity-regularised training to prepare for pruning: bn-l1 (L1 penalty on the "
                        "BatchNorm scales, network slimming); writes <out>.scales.png")
    p.add_argument("--sparsity-lambda", type=float, metavar="LAMBDA",
                   help="weight of the L1 penalty (default 1e-4); needs --sparsity")
    p.add_argument("--dynamic-thresholds", action="store_true",
                   help="penalise only channels below a per-layer threshold recomputed every epoch, keeping at "
                        "least a quarter of every layer above it (needs --sparsity)")
    seed_arg(p)
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (same arch and classes) instead of a random init: "
                        "a warm restart that continues a finished schedule")
    p.add_argument("--out", required=True, help="checkpoint path (.pt); <out>.partial keeps the state to resume")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("demo", help="run the whole pipeline on the embedded digits data")
    p.add_argument("--out", default="out/demo", help="where the demo writes its models and report")
    p.add_argument("--episodes", type=int, default=300, help="search episodes")
    seed_arg(p)
    settings_args(p, "the demo's: --proxy bn --proxy-measure accuracy, suited to its tiny model")

    p = sub.add_parser("info", help="per-layer channels, FLOPs and parameters of a model file, against its dense architecture")
    p.add_argument("model", help="an autoprune model file (.pt)")

    p = sub.add_parser("convert", help="rewrite a model file, e.g. with float16 weights (half the size; loads as float32)")
    p.add_argument("model", help="an autoprune model file (.pt)")
    p.add_argument("--half", action="store_true", help="store float32 weights as float16")
    data_args(p, default=None)
    p.add_argument("--out", required=True, help="the new model file")

    p = sub.add_parser("models", help="list the model zoo")
    p = sub.add_parser("criteria", help="list the channel importance criteria")
    p = sub.add_parser("methods", help="list the baseline methods of `prune --method` and `evaluate --baselines`")


@command("demo")
def cmd_demo(args: argparse.Namespace) -> None:
    from autoprune.demo import DEMO_SETTINGS, run_demo

    run_demo(args.out, args.seed, args.episodes, settings_from(args, DEMO_SETTINGS))


@command("criteria")
def cmd_criteria(args: argparse.Namespace) -> None:
    from autoprune.pruning import list_criteria

    print("\n".join(list_criteria()))


@command("methods")
def cmd_methods(args: argparse.Namespace) -> None:
    from autoprune.agents.baselines import SEARCHERS, list_searchers

    for name in list_searchers():
        print(f"{name:<20} {SEARCHERS.get(name).summary}")


@command("info")
def cmd_info(args: argparse.Namespace) -> None:
    import torch

    from autoprune import models
    from autoprune.checkpoint import load_model
    from autoprune.pruning import count_flops, count_params

    model, payload = load_model(args.model)
    meta = payload.get("meta", {})
    dense = models.create(payload["arch"], num_classes=payload["num_classes"], in_channels=payload.get("in_channels", 3))
    x = torch.zeros(1, *meta.get("input_shape", [payload.get("in_channels", 3), 32, 32]))
    flops, dense_flops = count_flops(model, x), count_flops(dense, x)
    params, dense_params = count_params(model), count_params(dense)
    print(f"{args.model}: {payload['arch']} ({meta.get('kind', 'model')}), {payload['num_classes']} classes, input {tuple(x.shape[1:])}")
    dense_layers = {n: m for n, m in dense.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    print(f"{'layer':<36} {'in':>6} {'out':>6} {'dense out':>9}")
    for name, m in model.named_modules():
        if name in dense_layers:
            cin = getattr(m, "in_channels", getattr(m, "in_features", 0))
            cout = getattr(m, "out_channels", getattr(m, "out_features", 0))
            d = dense_layers[name]
            print(f"{name:<36} {cin:>6} {cout:>6} {getattr(d, 'out_channels', getattr(d, 'out_features', 0)):>9}")
    print(f"FLOPs (MACs/image): {flops:,} of {dense_flops:,} ({flops / dense_flops:.3f})")
    print(f"parameters:        {params:,} of {dense_params:,} ({params / dense_params:.3f})")
    for key in ("dataset", "test_accuracy", "target", "achieved_flops_ratio"):
        if key in meta:
            print(f"{key}: {meta[key]}")


@command("convert")
def cmd_convert(args: argparse.Namespace) -> None:
    import copy
    import os

    import torch

    from autoprune.checkpoint import load_model, save_model
    from autoprune.data import load_splits
    from autoprune.training import evaluate
    from autoprune.utils import check_output

    if not args.half:
        raise AutopruneError("nothing to convert: give --half")
    check_output(args.out, "--out")
    model, payload = load_model(args.model)
    meta = dict(payload.get("meta", {}))
    splits = load_splits(args.data or meta.get("dataset", "digits"), args.data_dir, args.val_size or meta.get("val_size"))
    rounded = copy.deepcopy(model)  # what the file will load as: float16 weights back in float32
    rounded.load_state_dict({k: v.half().float() if v.dtype == torch.float32 else v for k, v in model.state_dict().items()})
    before, after = evaluate(model, splits.test), evaluate(rounded, splits.test)
    meta.update(test_accuracy=after, test_accuracy_float32=before, converted_from=str(args.model))
    save_model(args.out, model, payload["arch"], payload["num_classes"], meta, in_channels=payload.get("in_channels", 3),
               half=True)
    print(f"{args.model} ({os.path.getsize(args.model) / 1e6:.1f} MB) -> {args.out} "
          f"({os.path.getsize(args.out) / 1e6:.1f} MB, float16 weights, loads as float32)")
    print(f"test accuracy: {before:.2f}% with float32 weights, {after:.2f}% with float16 weights "
          f"({after - before:+.2f} points)")


@command("models")
def cmd_models(args: argparse.Namespace) -> None:
    from autoprune import models

    print("\n".join(models.list_models()))
    print("tv:<name>  (any torchvision classification model, random init)")


@command("train")
def cmd_train(args: argparse.Namespace) -> None:
    from autoprune import models
    from autoprune.checkpoint import save_model
    from autoprune.data import load_splits
    from autoprune.training import TrainConfig, evaluate, fit
    from autoprune.utils import check_output, seed_everything, versions

    if not args.arch.startswith(models.TORCHVISION_PREFIX):
        models.MODELS.get(args.arch)  # fail fast on a typo, before loading any data
    out = check_output(args.out, "--out")  # before the training, not after it
    if args.sparsity is None and args.sparsity_lambda is not None:
        raise AutopruneError("--sparsity-lambda needs a sparsity method: give --sparsity bn-l1 as well")
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         schedule=args.schedule, label_smoothing=args.label_smoothing, seed=args.seed,
                         swa_epochs=args.swa_epochs, swa_lr=args.swa_lr, precision=args.precision or "fp32",
                         sparsity=args.sparsity, dynamic_thresholds=args.dynamic_thresholds,
                         **({} if args.sparsity_lambda is None else {"sparsity_lambda": args.sparsity_lambda}))
    splits = load_splits(args.data, args.data_dir, args.val_size)
    seed_everything(args.seed)
    model = models.create(args.arch, num_classes=splits.num_classes, in_channels=splits.input_shape[0])
    init = _load_init(args.init, model, args.arch, splits.num_classes) if args.init else None
    before = None
    if config.sparsity is not None:
        from autoprune.sparsity import SparsityRegularizer, bn_scales

        regularizer = SparsityRegularizer(config.sparsity, config.sparsity_lambda, config.dynamic_thresholds)
        regularizer.check_model(model)  # before any training: the model has BatchNorm scales to penalise
        before = (bn_scales(model), regularizer.layer_stats(model))
    print(f"training {args.arch} on {args.data}: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images")
    result = fit(model, splits, config, resume_path=out.with_name(out.name + ".partial"), progress=not args.no_progress)
    test_acc = evaluate(model, splits.test)
    meta = {
        "kind": "base", "dataset": args.data, "val_size": splits.val_size, "input_shape": list(splits.input_shape),
        "test_accuracy": test_acc, "val_accuracy": result.best_val_accuracy, "train_seconds": result.seconds,
        "seed": args.seed, "config": vars(config), "history": result.history, "versions": versions(),
    }
    if init is not None:
        meta["init"] = init
    if result.sparsity is not None and before is not None:
        from autoprune.sparsity import format_layer_stats, plot_scale_distributions, summary_line

        plot = out.with_name(out.name + ".scales.png")
        thresholds = {r["layer"]: r["threshold"] for r in result.sparsity["layers"]}
        plot_scale_distributions(before[0], model, plot, thresholds=thresholds,
                                 title=f"{args.arch}: BatchNorm scales before and after {config.sparsity} training")
        meta["sparsity"] = {**result.sparsity, "before": before[1], "scales_plot": plot.name}
        print(format_layer_stats(result.sparsity["layers"], before=before[1]))
        print(f"before: {summary_line(before[1])}\nafter:  {summary_line(result.sparsity['layers'])}  -> {plot}")
    save_model(out, model, args.arch, splits.num_classes, meta, in_channels=splits.input_shape[0])
    out.with_name(out.name + ".partial").unlink(missing_ok=True)
    print(f"test accuracy {test_acc:.2f}%  (best val {result.best_val_accuracy:.2f}%, {result.seconds / 60:.1f} min) -> {out}")


def _load_init(path: str, model, arch: str, num_classes: int) -> dict:
    """Copy a dense checkpoint's weights into ``model``; return what the new checkpoint records about it."""
    from autoprune.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    if ckpt["arch"] != arch or ckpt["num_classes"] != num_classes:
        raise AutopruneError(f"--init {path} holds {ckpt['arch']} with {ckpt['num_classes']} classes, "
                             f"not {arch} with {num_classes}; pass a checkpoint of the same model")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise AutopruneError(f"--init {path} does not fit a dense {arch} (is it a pruned model?): "
                             f"{str(exc).splitlines()[0]}") from None
    meta = ckpt.get("meta", {})
    config = meta.get("config", {})
    epochs = config.get("epochs", 0) + config.get("swa_epochs", 0) + meta.get("init", {}).get("epochs", 0)
    return {"path": path, "test_accuracy": meta.get("test_accuracy"), "epochs": epochs}
