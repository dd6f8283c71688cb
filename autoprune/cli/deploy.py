"""Sub-commands of this package (added to the ``autoprune`` parser by ``autoprune.cli``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoprune.cli.common import command, data_args, positive_int, recipe_args, recipe_from, seed_arg


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this package's sub-commands to the ``autoprune`` parser."""
    p = sub.add_parser("finetune", help="fine-tune a (pruned) model to recover accuracy, optionally distilling from its base")
    p.add_argument("model", help="an autoprune model file (.pt)")
    data_args(p, default=None)
    recipe_args(p, "--epochs")
    p.add_argument("--teacher", help="the unpruned model (.pt) to distil from (default: the base checkpoint the "
                                     "model file records, when it exists)")
    p.add_argument("--batch-size", type=int, help="default 128")
    p.add_argument("--weight-decay", type=float, help="default 5e-4")
    p.add_argument("--temperature", type=float, help="distillation temperature (default 4)")
    p.add_argument("--alpha", type=float, help="weight of the distillation term (default 0.9)")
    seed_arg(p)
    p.add_argument("--out", required=True, help="where to write the fine-tuned model (.pt)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("export", help="export a model file to ONNX or TorchScript")
    p.add_argument("model", help="an autoprune model file (.pt)")
    p.add_argument("--format", default="onnx", help="onnx (default) or torchscript")
    p.add_argument("--out", required=True, help="output file (.onnx, or .pt for TorchScript)")

    p = sub.add_parser("quantize", help="int8 quantization (ONNX Runtime) with post-training calibration or QAT")
    p.add_argument("model", help="an autoprune model file (.pt)")
    p.add_argument("--method", default="ptq", help="ptq (calibration only, default) or qat (short fake-quant fine-tune first)")
    data_args(p, default=None)
    p.add_argument("--calib-batches", type=int, default=16, help="training batches that set the activation ranges")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--qat-epochs", type=int, help="with --method qat: fake-quant fine-tune epochs (default 2)")
    p.add_argument("--qat-lr", type=float, default=1e-3)
    seed_arg(p)
    p.add_argument("--out", required=True, help="the int8 model (.onnx)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("bench", help="latency and throughput in PyTorch and ONNX Runtime, side by side")
    p.add_argument("models", nargs="+", help="model files: autoprune .pt, TorchScript, ONNX (fp32 or int8)")
    p.add_argument("--baseline", help="a model file to compare against (speedup column)")
    p.add_argument("--batch", default="1,64", help="batch sizes, comma-separated (default 1,64)")
    p.add_argument("--repeats", type=int, default=50, help="timed runs per model and batch size (median reported)")
    p.add_argument("--warmup", type=int, default=5)
    # its own dest: a sub-parser default would otherwise overwrite the global --threads
    p.add_argument("--threads", dest="bench_threads", type=positive_int, help="CPU threads for both runtimes (default: PyTorch's, i.e. all cores)")
    p.add_argument("--runtimes", default="torch,onnxruntime", help="comma-separated subset of torch,onnxruntime")
    p.add_argument("--fold-bn", action="store_true",
                   help="fold BatchNorm into the convolutions before timing in PyTorch (baseline and models alike)")
    p.add_argument("--json", metavar="PATH", help="also write the rows, settings and versions to this JSON file")


@command("finetune")
def cmd_finetune(args: argparse.Namespace) -> None:
    from autoprune.checkpoint import load_model, save_model
    from autoprune.deploy.splits import splits_for_model
    from autoprune.errors import AutopruneError
    from autoprune.recovery import finetune
    from autoprune.training import evaluate
    from autoprune.utils import check_output, seed_everything, versions

    if args.finetune_epochs < 1:
        raise AutopruneError(f"--epochs must be >= 1, got {args.finetune_epochs}")
    recipe = recipe_from(args).replace(batch_size=args.batch_size, weight_decay=args.weight_decay,
                                       temperature=args.temperature, alpha=args.alpha)
    if args.teacher and not recipe.distill:
        raise AutopruneError("--teacher is only used for distillation; drop --no-distill or drop --teacher")
    check_output(args.out, "--out")
    model, payload = load_model(args.model)
    meta = payload.get("meta", {})
    teacher_path = args.teacher or (meta.get("base_checkpoint") if recipe.distill else None)
    if recipe.distill and not teacher_path:
        raise AutopruneError("distillation (the default recipe) needs the unpruned model: pass --teacher BASE.pt "
                             "(the model the pruned one came from), or --no-distill")
    teacher = None
    if recipe.distill:
        teacher, teacher_payload = load_model(teacher_path)  # names the file when it is missing or unreadable
        _check_same_task(meta, teacher_payload.get("meta", {}), teacher_path)
    splits = splits_for_model(payload, args.data, args.data_dir, args.val_size, source=args.model)
    seed_everything(args.seed)
    print(f"fine-tuning {args.model} ({payload['arch']}) on {splits.train.name} for {recipe.epochs} epochs "
          f"({recipe.schedule}, lr {recipe.lr:g})" + (f", distilling from {teacher_path}" if teacher is not None else ""))
    result = finetune(model, splits, recipe, teacher=teacher, seed=args.seed, progress=not args.no_progress)
    test_acc = evaluate(model, splits.test)
    meta = dict(meta)
    meta.update({"dataset": splits.train.name, "val_size": splits.val_size, "input_shape": list(splits.input_shape),
                 "test_accuracy": test_acc, "val_accuracy": result.val_after, "versions": versions(),
                 "finetune": {**result.summary(), "source": str(args.model), "teacher": teacher_path if teacher is not None else None,
                              "test_accuracy_before": payload.get("meta", {}).get("test_accuracy")}})
    save_model(args.out, model, payload["arch"], payload["num_classes"], meta, in_channels=payload.get("in_channels", 3))
    kept = "  (no epoch beat the starting weights; kept them)" if result.kept_initial else ""
    print(f"val {result.val_before:.2f}% -> {result.val_after:.2f}%  test {test_acc:.2f}%{kept} -> {args.out}")


def _check_same_task(meta: dict, teacher_meta: dict, teacher_path: str) -> None:
    """A teacher trained on another data set or input size would distil nonsense: refuse it up front."""
    from autoprune.errors import AutopruneError

    for key, what in (("dataset", "data set"), ("input_shape", "input shape")):
        mine, theirs = meta.get(key), teacher_meta.get(key)
        if mine is not None and theirs is not None and mine != theirs:
            raise AutopruneError(f"teacher {teacher_path} was trained with {what} {theirs}, the model with {mine}: "
                                 "pass the unpruned model the pruned one came from")


@command("export")
def cmd_export(args: argparse.Namespace) -> None:
    import torch

    from autoprune.checkpoint import load_model
    from autoprune.deploy.export import check_format, export, max_abs_difference
    from autoprune.utils import check_output

    check_format(args.format)
    check_output(args.out, "--out")
    model, payload = load_model(args.model)
    meta = {**payload["meta"], "arch": payload["arch"], "num_classes": payload["num_classes"], "source": str(args.model)}
    shape = tuple(meta.get("input_shape", [payload.get("in_channels", 3), 32, 32]))
    export(model, args.out, args.format, shape, meta)
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(1))
    diff = max_abs_difference(model, args.out, x)
    print(f"{args.out}: {args.format}, {Path(args.out).stat().st_size:,} bytes, input (N, {', '.join(map(str, shape))}); "
          f"max |logit difference| vs PyTorch on 8 random inputs: {diff:.1e}")


@command("quantize")
def cmd_quantize(args: argparse.Namespace) -> None:
    from autoprune.checkpoint import load_model
    from autoprune.deploy.quantize import check_method, quantize
    from autoprune.deploy.splits import splits_for_model
    from autoprune.errors import AutopruneError
    from autoprune.utils import check_output, seed_everything

    check_method(args.method)
    if args.method == "ptq" and args.qat_epochs is not None:
        raise AutopruneError("--qat-epochs applies to --method qat; post-training quantization (ptq) trains nothing")
    if args.qat_epochs is not None and args.qat_epochs < 1:
        raise AutopruneError(f"--qat-epochs must be >= 1, got {args.qat_epochs}")
    check_output(args.out, "--out")
    model, payload = load_model(args.model)
    splits = splits_for_model(payload, args.data, args.data_dir, args.val_size, source=args.model)
    seed_everything(args.seed)
    meta = {**payload["meta"], "arch": payload["arch"], "num_classes": payload["num_classes"], "source": str(args.model)}
    r = quantize(model, splits, args.out, method=args.method, calib_batches=args.calib_batches, batch_size=args.batch_size,
                 **({} if args.qat_epochs is None else {"qat_epochs": args.qat_epochs}), qat_lr=args.qat_lr, seed=args.seed, meta=meta, progress=not args.no_progress)
    print(f"{'':12} {'ONNX size (bytes)':>18} {'test accuracy':>14}")
    print(f"{'fp32':12} {r.fp32_bytes:>18,} {r.fp32_accuracy:>13.2f}%")
    print(f"{'int8 ' + r.method:12} {r.int8_bytes:>18,} {r.int8_accuracy:>13.2f}%")
    source_bytes = Path(args.model).stat().st_size
    print(f"{r.size_ratio:.2f}x smaller than the fp32 ONNX graph, {source_bytes / r.int8_bytes:.2f}x smaller than "
          f"{Path(args.model).name} ({source_bytes:,} bytes); {r.calibration_images} calibration images, "
          f"{r.seconds:.0f}s -> {args.out}")


@command("bench")
def cmd_bench(args: argparse.Namespace) -> None:
    from autoprune.deploy.bench import bench, format_table, parse_batches
    from autoprune.utils import check_output

    threads = args.bench_threads or args.threads
    if args.json:
        check_output(args.json, "--json")
    rows = bench(args.models, args.baseline, parse_batches(args.batch), repeats=args.repeats, warmup=args.warmup,
                 threads=threads, runtimes=[r.strip() for r in args.runtimes.split(",") if r.strip()], fold_bn=args.fold_bn)
    print(format_table(rows))
    print(f"median of {args.repeats} interleaved runs after {args.warmup} warm-up runs, "
          f"{rows[0]['threads'] if rows else threads} CPU thread(s)")
    if args.json:
        import json
        import sys

        from autoprune.utils import versions, write_text_atomic

        settings = {k: getattr(args, k) for k in ("models", "baseline", "batch", "repeats", "warmup", "runtimes", "fold_bn")}
        report = {"command": " ".join(["autoprune", *sys.argv[1:]]), "settings": {**settings, "threads": threads},
                  "versions": versions(), "rows": rows}
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
