"""Recover and ship a pruned ResNet-20: prune to a FLOPs target, fine-tune plain vs with distillation (equal
epochs), quantize the better one to int8, and time base / pruned / int8 side by side on the CPU."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from autoprune.checkpoint import load_model, save_model
from autoprune.data import BatchLoader
from autoprune.deploy.bench import format_table
from autoprune.deploy.quantize import quantize
from autoprune.deploy.splits import splits_for_model
from autoprune.pruning import PruningSpace, count_flops, count_params
from autoprune.recovery import FinetuneRecipe, finetune
from autoprune.training import evaluate, recalibrate_bn
from autoprune.utils import seed_everything
from experiments.common import bench_in_fresh_processes, run_script, shaped_strategy, write_report


@dataclass
class Config:
    checkpoint: str = "checkpoints/resnet20-cifar10.pt"
    data: str = ""  # empty: the data set the checkpoint records
    data_dir: str = "../shared/data/cifar10"
    target: float = 0.5  # FLOPs ratio of the pruning
    shape: str = "uniform"  # uniform, early or late (experiments.common.shaped_strategy), then the budget fill
    criterion: str = "l1"
    round_to: int = 8  # channel multiple: counts such as 11/22/45 run no faster than the dense model
    finetune_epochs: int = 10  # the same for the plain and the distilled run
    lr: float = 0.01
    schedule: str = "cosine"  # the recipe the committed figures were measured with
    batch_size: int = 128
    quant_method: str = "ptq"
    calib_batches: int = 16
    batches: str = "1,64"
    repeats: int = 50
    bench_runs: int = 3  # separate timing processes; the report gives the median of their medians
    threads: int = 1  # CPU threads for the timing
    train_threads: int = 0  # CPU threads for fine-tuning and calibration (0: the same as threads)
    seed: int = 0
    work_dir: str = "out/deploy_resnet20"  # the models this writes
    out_dir: str = "docs/results"
    name: str = "deploy_resnet20"


def format_table_runs(rows: list[dict]) -> str:
    lines = format_table(rows).splitlines()
    lines[0] += " speedup per process |"
    lines[1] += "---|"
    for i, r in enumerate(rows):
        runs = " / ".join(f"{s:.2f}x" for s in r["speedup_runs"]) if None not in r["speedup_runs"] else "—"
        lines[i + 2] += f" {runs} |"
    return "\n".join(lines)


def log(line: str) -> None:
    print(line, flush=True)


def main(cfg: Config) -> None:
    torch.set_num_threads(cfg.train_threads or cfg.threads)
    seed_everything(cfg.seed)
    work = Path(cfg.work_dir)
    base, payload = load_model(cfg.checkpoint)
    arch, num_classes, meta = payload["arch"], payload["num_classes"], payload["meta"]
    splits = splits_for_model(payload, cfg.data or None, cfg.data_dir, source=cfg.checkpoint)
    example = torch.zeros(1, *splits.input_shape)
    log(f"{cfg.checkpoint}: {arch} on {splits.train.name}, {len(splits.train)} train / {len(splits.val)} val / "
        f"{len(splits.test)} test images")
    models = {"base": {"file": cfg.checkpoint, "flops": count_flops(base, example), "params": count_params(base),
                       "val_accuracy": evaluate(base, splits.val), "test_accuracy": evaluate(base, splits.test)}}

    # prune: the chosen shape (uniform: one keep ratio for every group), then the budget fill spends
    # what channel counts in multiples of round_to leave under the target
    space = PruningSpace(base, example, round_to=cfg.round_to)
    strategy = shaped_strategy(space, cfg.shape, cfg.target)
    pruned = space.apply(strategy, cfg.criterion)
    flops_ratio = count_flops(pruned, example) / space.dense_flops
    no_ft = copy.deepcopy(pruned)
    recalibrate_bn(no_ft, (x for x, _ in BatchLoader(splits.train, cfg.batch_size, shuffle=True, seed=cfg.seed, max_batches=20)))
    models["pruned, no fine-tune"] = {"flops": count_flops(pruned, example), "params": count_params(pruned),
                                      "val_accuracy": evaluate(no_ft, splits.val), "test_accuracy": evaluate(no_ft, splits.test)}
    log(f"pruned to FLOPs ratio {flops_ratio:.3f}: test {models['pruned, no fine-tune']['test_accuracy']:.2f}% "
        "before fine-tuning (BN recalibrated)")

    # recover: equal epochs, with and without distillation from the base model
    tuned = {}
    for label, teacher in (("plain", None), ("distill", base)):
        log(f"fine-tuning ({label}) for {cfg.finetune_epochs} epochs")
        model = copy.deepcopy(pruned)
        recipe = FinetuneRecipe(epochs=cfg.finetune_epochs, lr=cfg.lr, schedule=cfg.schedule, batch_size=cfg.batch_size,
                                distill=teacher is not None)
        result = finetune(model, splits, recipe, teacher=teacher, seed=cfg.seed, progress=False, log=log)
        test_acc = evaluate(model, splits.test)
        path = work / f"pruned_{label}.pt"
        save_model(path, model, arch, num_classes, {**meta, "kind": "pruned", "target": cfg.target,
                   "achieved_flops_ratio": flops_ratio, "test_accuracy": test_acc, "val_accuracy": result.val_after,
                   "finetune": result.summary()}, in_channels=payload.get("in_channels", 3))
        tuned[label] = model
        models[f"pruned + fine-tune ({label})"] = {
            "file": str(path), "flops": count_flops(model, example), "params": count_params(model),
            "val_accuracy": result.val_after, "test_accuracy": test_acc, "finetune_seconds": result.train.seconds}

    # ship: the better recovery by validation accuracy (the test split only reports), quantized to int8
    best = max(tuned, key=lambda k: models[f"pruned + fine-tune ({k})"]["val_accuracy"])
    log(f"quantizing the {best} model to int8 ({cfg.quant_method})")
    q = quantize(tuned[best], splits, work / "pruned_int8.onnx", method=cfg.quant_method, calib_batches=cfg.calib_batches,
                 seed=cfg.seed, meta={**meta, "arch": arch, "num_classes": num_classes}, progress=False, log=log)
    models[f"pruned ({best}) int8"] = {"file": str(q.path), "flops": count_flops(tuned[best], example),
                                       "params": count_params(tuned[best]), "test_accuracy": q.int8_accuracy}
    for row in models.values():
        if "file" in row:
            row["file_bytes"] = Path(row["file"]).stat().st_size

    log("timing base / pruned / int8 side by side")
    shipped = [work / f"pruned_{best}.pt", q.path]
    rows = bench_in_fresh_processes(shipped, cfg.checkpoint, cfg.batches, cfg.repeats, cfg.threads, cfg.bench_runs)
    rows += bench_in_fresh_processes(shipped[:1], cfg.checkpoint, cfg.batches, cfg.repeats, cfg.threads, cfg.bench_runs,
                                     fold_bn=True)

    pt_bytes = models[f"pruned + fine-tune ({best})"]["file_bytes"]
    results = {"dataset": splits.train.name, "arch": arch, "target": cfg.target, "achieved_flops_ratio": flops_ratio,
               "kept_channels": space.keep_counts(strategy).tolist(), "shipped": best,
               "models": models,
               "quantization": {**q.summary(), "fp32_model_file_bytes": pt_bytes, "model_file_ratio": pt_bytes / q.int8_bytes}, "latency": rows}
    lines = ["| model | MFLOPs | params | file (KB) | val acc | test acc |", "|---|---|---|---|---|---|"]
    for label, r in models.items():
        size = f"{r['file_bytes'] / 1024:.0f}" if "file_bytes" in r else "—"
        val = f"{r['val_accuracy']:.2f}%" if "val_accuracy" in r else "—"
        lines.append(f"| {label} | {r['flops'] / 1e6:.2f} | {r['params']:,} | {size} | {val} | {r['test_accuracy']:.2f}% |")
    md = (f"{arch} on {splits.train.name}, pruned for target {cfg.target:g} ({cfg.shape} shape + budget fill, channel "
          f"counts in multiples of {cfg.round_to}; FLOPs ratio {flops_ratio:.3f}, {cfg.criterion} criterion), "
          f"{cfg.finetune_epochs} fine-tuning epochs each, int8 {cfg.quant_method} (ONNX Runtime, "
          f"{q.calibration_images} calibration images). int8 file {q.int8_bytes / 1024:.0f} KB: "
          f"{pt_bytes / q.int8_bytes:.2f}x smaller than the fp32 model file ({pt_bytes / 1024:.0f} KB), "
          f"{q.size_ratio:.2f}x smaller than its fp32 ONNX graph ({q.fp32_bytes / 1024:.0f} KB).\n\n" + "\n".join(lines) +
          f"\n\nCPU latency, {cfg.threads} thread(s): in each of {cfg.bench_runs} fresh processes the median of "
          f"{cfg.repeats} interleaved runs; the table gives the median over the processes (speedup over the base "
          "model in the same runtime; every process's speedup in the last column):\n\n" + format_table_runs(rows))
    write_report(cfg.name, cfg, results, md, out_dir=cfg.out_dir)


if __name__ == "__main__":
    run_script(main, Config)
