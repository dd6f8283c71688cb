"""CPU latency of a model pruned to a FLOPs target, with and without channel rounding, side by side
with the dense model (PyTorch and ONNX Runtime). Latency does not depend on the weights, so a
randomly initialised model is used unless a checkpoint is given."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from autoprune import models
from autoprune.checkpoint import load_model, save_model
from autoprune.deploy.bench import bench, format_table, parse_batches
from autoprune.pruning import PruningSpace
from experiments.common import parse_config, write_report


@dataclass
class Config:
    arch: str = "resnet20"
    checkpoint: str = ""
    target: float = 0.5
    round_to: str = "1,8"
    batches: str = "1,64"
    repeats: int = 30
    threads: int = 1
    seed: int = 0


def main(cfg: Config) -> None:
    torch.manual_seed(cfg.seed)
    if cfg.checkpoint:
        model, payload = load_model(cfg.checkpoint)
        arch = payload["arch"]
    else:
        model, arch = models.create(cfg.arch).eval(), cfg.arch
    example = torch.zeros(1, 3, 32, 32)
    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / f"{arch}-dense.pt"
        save_model(base, model, arch, 10, {"input_shape": [3, 32, 32]})
        files = []
        for m in (int(r) for r in cfg.round_to.split(",")):
            space = PruningSpace(model, example, round_to=m)
            strategy = space.uniform(cfg.target)
            path = Path(tmp) / f"{arch}-uniform{cfg.target:g}-round{m}.pt"
            save_model(path, space.apply(strategy), arch, 10, {"input_shape": [3, 32, 32]})
            files.append(path)
            variants[path.name] = {"round_to": m, "flops_ratio": space.flops_ratio(strategy),
                                   "kept_channels": space.keep_counts(strategy).tolist()}
        rows = bench(files, baseline=base, batches=parse_batches(cfg.batches), repeats=cfg.repeats, threads=cfg.threads)
    lines = ["| model | round_to | FLOPs ratio | kept channels per group |", "|---|---|---|---|"]
    lines += [f"| {n} | {v['round_to']} | {v['flops_ratio']:.3f} | {' '.join(map(str, v['kept_channels']))} |" for n, v in variants.items()]
    write_report(f"bench_latency_{arch}", cfg, {"variants": variants, "rows": rows}, "\n".join(lines) + "\n\n" + format_table(rows))


if __name__ == "__main__":
    main(parse_config(Config))
