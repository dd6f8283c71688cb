"""CPU latency of one model pruned to a FLOPs target in several *shapes*, side by side with the dense
model, in eager PyTorch (with and without BatchNorm folded into the convolutions) and ONNX Runtime.

Every shape spends (about) the same FLOPs; they differ in where the channels go:

- ``uniform-r{m}``: one keep ratio for all groups, counts in multiples of m, then the budget fill;
- ``uniform-r{m}-nofill``: the same without the fill (lands below the target when m > 1);
- ``early-r{m}`` / ``late-r{m}``: groups on larger feature maps pruned harder (early) or softer (late),
  in proportion to the feature-map side, then filled.

Latency does not depend on the weights, so a randomly initialised model is used unless a checkpoint
is given. With ``--profile`` (the default; ``--no-profile`` skips it) the time of every convolution shape
at the largest batch is written too.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoprune import models
from autoprune.checkpoint import load_model, save_model
from autoprune.deploy.bench import bench, format_table, parse_batches
from autoprune.pruning import PruningSpace
from experiments.common import run_script, shaped_strategy, write_report


@dataclass
class Config:
    arch: str = "resnet20"
    checkpoint: str = ""
    target: float = 0.5
    round_to: str = "8,16"  # channel multiples to try
    batches: str = "1,64"
    repeats: int = 30
    threads: int = 1
    profile: bool = True
    seed: int = 0


def shapes(space: PruningSpace, target: float) -> dict[str, np.ndarray]:
    """Strategies named by shape, all within ``target``."""
    m = space.round_to
    out = {f"uniform-r{m}": shaped_strategy(space, "uniform", target),
           f"uniform-r{m}-nofill": shaped_strategy(space, "uniform", target, fill=False)}
    for name in ("early", "late"):
        out[f"{name}-r{m}"] = shaped_strategy(space, name, target)
    return out


def conv_profile(model: torch.nn.Module, batch: int) -> list[dict]:
    """Self CPU time per convolution input shape, one forward pass at ``batch`` after a warm-up."""
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    model = model.eval().to(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)
        with torch.profiler.profile(record_shapes=True) as prof:
            for _ in range(5):
                model(x)
    by_shape: dict[str, dict] = {}
    for e in prof.key_averages(group_by_input_shape=True):
        if "convolution" in e.key and e.input_shapes:  # the wrappers' self time is small; the kernel's is not
            row = by_shape.setdefault(str(e.input_shapes[:2]), {"input_shapes": str(e.input_shapes[:2]), "ms": 0.0, "calls": 0})
            row["ms"] += e.self_cpu_time_total / 1000 / 5
            row["calls"] = max(row["calls"], e.count // 5)
    return sorted(by_shape.values(), key=lambda r: -r["ms"])


def main(cfg: Config) -> None:
    torch.manual_seed(cfg.seed)
    if cfg.checkpoint:
        model, payload = load_model(cfg.checkpoint)
        arch = payload["arch"]
    else:
        model, arch = models.create(cfg.arch).eval(), cfg.arch
    torch.set_num_threads(cfg.threads)
    example = torch.zeros(1, 3, 32, 32)
    variants, pruned = {}, {}
    for m in (int(r) for r in cfg.round_to.split(",")):
        space = PruningSpace(model, example, round_to=m)
        for name, strategy in shapes(space, cfg.target).items():
            pruned[name] = space.apply(strategy).eval()
            variants[name] = {"round_to": m, "flops_ratio": space.flops_ratio(strategy),
                              "kept_channels": space.keep_counts(strategy).tolist()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / f"{arch}-dense.pt"
        save_model(base, model, arch, 10, {"input_shape": [3, 32, 32]})
        files = []
        for name, module in pruned.items():
            files.append(Path(tmp) / f"{name}.pt")
            save_model(files[-1], module, arch, 10, {"input_shape": [3, 32, 32]})
        batches = parse_batches(cfg.batches)
        rows += bench(files, baseline=base, batches=batches, repeats=cfg.repeats, threads=cfg.threads)
        rows += bench(files, baseline=base, batches=batches, repeats=cfg.repeats, threads=cfg.threads,
                      runtimes=("torch",), fold_bn=True)
    profiles = {}
    if cfg.profile:
        profiles = {name: conv_profile(m, max(batches)) for name, m in {"dense": model, **pruned}.items()}
    lines = ["| model | round_to | FLOPs ratio | kept channels per group |", "|---|---|---|---|"]
    lines += [f"| {n}.pt | {v['round_to']} | {v['flops_ratio']:.3f} | {' '.join(map(str, v['kept_channels']))} |"
              for n, v in variants.items()]
    text = "\n".join(lines) + "\n\n" + format_table(rows)
    if profiles:
        text += f"\n\nSelf time of the convolutions (ms per forward pass, batch {max(batches)}), by input shape:\n"
        for name, prof in profiles.items():
            total = sum(r["ms"] for r in prof)
            text += f"\n- {name}: {total:.1f} ms in all; " + "; ".join(f"{r['input_shapes']} x{r['calls']}: {r['ms']:.1f}"
                                                                       for r in prof[:6])
    write_report(f"bench_latency_{arch}", cfg, {"variants": variants, "rows": rows, "conv_profile": profiles}, text)


if __name__ == "__main__":
    run_script(main, Config)
