"""Training throughput in float32 and under bfloat16 autocast (``TrainConfig.precision``).

Times whole SGD steps (forward, loss, backward, update) of channels_last models on random batches
of CIFAR-sized images; the two precisions alternate round by round so that a change in machine load
hits both alike. The accuracy side of the trade is measured by real runs (docs/RESULTS.md).

    python -m experiments.bench_train_precision --threads 2
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from autoprune import models
from experiments.common import run_script, write_report


@dataclass
class Config:
    archs: str = "resnet20,resnet56,mobilenetv2"
    batch_size: int = 128
    steps: int = 10  # timed steps per round
    rounds: int = 5
    warmup: int = 3
    threads: int = 2
    seed: int = 0


def images_per_second(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                      bf16: bool, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * len(x) / (time.perf_counter() - t0)


def main(cfg: Config) -> None:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    x = torch.randn(cfg.batch_size, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (cfg.batch_size,))
    results = {}
    for arch in cfg.archs.split(","):
        model = models.create(arch, num_classes=10).to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        speeds: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for name in speeds:
            images_per_second(model, optimizer, x, y, name == "bf16", cfg.warmup)
        for _ in range(cfg.rounds):
            for name in speeds:
                speeds[name].append(images_per_second(model, optimizer, x, y, name == "bf16", cfg.steps))
        fp32, bf16 = statistics.median(speeds["fp32"]), statistics.median(speeds["bf16"])
        results[arch] = {"fp32_img_s": fp32, "bf16_img_s": bf16, "speedup": bf16 / fp32, "rounds": speeds}
        print(f"{arch}: fp32 {fp32:.0f} img/s, bf16 {bf16:.0f} img/s ({bf16 / fp32:.2f}x)", flush=True)
    md = "| model | fp32 (img/s) | bf16 autocast (img/s) | speedup |\n|---|---|---|---|\n" + "\n".join(
        f"| {a} | {r['fp32_img_s']:.0f} | {r['bf16_img_s']:.0f} | {r['speedup']:.2f}x |" for a, r in results.items())
    write_report("bench_train_precision", cfg, results, md)


if __name__ == "__main__":
    run_script(main, Config)
