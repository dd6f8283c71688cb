"""What each proxy costs per strategy, measured fairly: the proxies take turns on the same strategies
of the fidelity yardstick, and both wall-clock and CPU seconds are recorded, so a job running beside
the measurement weighs on every proxy alike (wall) or hardly at all (CPU, one thread).

A proxy is a spec of ``experiments.score_proxies`` (``name:key=value,...``). The cost of ``bn`` on 1,000
validation images, the proxy of the first ResNet-20 searches, is the unit the fidelity benchmark's
"at most 3x an episode" is counted in.

    python -m experiments.proxy_cost --threads 1 --per-target 4 \
        --proxies bn bn:images=5000 recon-bn:images=5000 recon:images=5000,measure=kl

``--arch NAME`` times an untrained model of another architecture instead, on ``--dataset`` (what a proxy
costs does not depend on the weights), at the ``SHAPES`` strategies of targets 0.3, 0.5 and 0.7:
what a search episode costs there under each proxy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from autoprune import models
from autoprune.data import load_splits
from autoprune.task import PruningSettings, PruningTask
from experiments.common import SHAPES, TaskConfig, run_script, shaped_strategy, write_report
from experiments.fidelity_data import read_yardstick
from experiments.score_proxies import base_task, parse_spec, proxy_task, usable


@dataclass
class Config(TaskConfig):
    data: str = "docs/results/fidelity_resnet20.json"  # the strategies (and base model) to time on
    checkpoint: str = ""  # the base model; "": the data file's
    arch: str = ""  # time an untrained model of this architecture instead (see above)
    dataset: str = "cifar10"  # the data set of --arch
    proxies: list[str] = field(default_factory=lambda: ["bn", "bn:images=5000", "recon:images=5000,measure=kl"])
    unit: str = "bn"  # the spec every cost is relative to
    per_target: int = 4  # strategies per target
    threads: int = 1
    name: str = "proxy_cost_resnet20"
    out_dir: str = "docs/results"


def main(cfg: Config) -> None:
    torch.set_num_threads(cfg.threads)
    if cfg.unit not in cfg.proxies:
        raise SystemExit(f"--unit {cfg.unit} must be one of --proxies")
    if cfg.arch:
        settings, base, strategies = arch_task(cfg)
        source = f"an untrained {cfg.arch} on {cfg.dataset} ({', '.join(SHAPES[:cfg.per_target])} strategies per target)"
    else:
        data = read_yardstick(cfg.data)
        rows = usable(data["strategies"], cfg.per_target)
        if not rows:
            raise SystemExit(f"{cfg.data} holds no fine-tuned strategy yet")
        settings, base = base_task(cfg.data, data, cfg.checkpoint, cfg.data_dir, cfg.proxy_images)
        strategies = [np.asarray(row["kept_channels"]) / base.space.channels for row in rows]
        source = f"`{cfg.data}` ({cfg.per_target} per target)"
    tasks = {}
    for spec in cfg.proxies:
        tasks[spec] = proxy_task(base, settings, *parse_spec(spec))
        tasks[spec].score(np.ones(base.space.num_groups))  # one-off work (the teacher's logits) outside the timing
    wall = {spec: [] for spec in cfg.proxies}
    cpu = {spec: [] for spec in cfg.proxies}
    for i, ratios in enumerate(strategies, 1):
        for spec, task in tasks.items():  # in turn on the same strategy
            w0, c0 = time.perf_counter(), time.process_time()
            task.score(ratios)
            wall[spec].append(time.perf_counter() - w0)
            cpu[spec].append(time.process_time() - c0)
        print(f"{i}/{len(strategies)} strategies: " + ", ".join(f"{s} {np.mean(cpu[s]):.1f} s" for s in cfg.proxies), flush=True)
    results = {"strategies": len(strategies), "groups": base.space.num_groups, "unit": cfg.unit, "proxies": [
        {"proxy": spec, "wall_s": float(np.mean(wall[spec])), "cpu_s": float(np.mean(cpu[spec])),
         "wall_relative": float(np.mean(wall[spec]) / np.mean(wall[cfg.unit])),
         "cpu_relative": float(np.mean(cpu[spec]) / np.mean(cpu[cfg.unit]))} for spec in cfg.proxies]}
    lines = [f"Mean seconds per strategy over {len(strategies)} strategies of {source}, "
             f"the proxies in turn on each, {cfg.threads} thread(s); relative to `{cfg.unit}`.", "",
             "| proxy | CPU s | × unit (CPU) | wall s | × unit (wall) |", "|---|---|---|---|---|"]
    for p in results["proxies"]:
        lines.append(f"| `{p['proxy']}` | {p['cpu_s']:.2f} | {p['cpu_relative']:.2f} | {p['wall_s']:.2f} | "
                     f"{p['wall_relative']:.2f} |")
    write_report(cfg.name, cfg, results, "\n".join(lines), out_dir=cfg.out_dir)


def arch_task(cfg: Config) -> tuple[PruningSettings, PruningTask, list[np.ndarray]]:
    """The task of an untrained ``cfg.arch`` on ``cfg.dataset`` and its strategies to time: ``per_target`` of
    the ``SHAPES`` at each of the targets 0.3, 0.5 and 0.7."""
    if not 1 <= cfg.per_target <= len(SHAPES):
        raise SystemExit(f"--per-target must be 1 to {len(SHAPES)} with --arch (one strategy per shape)")
    torch.manual_seed(0)
    splits = load_splits(cfg.dataset, cfg.data_dir or None)
    settings = PruningSettings(proxy_images=cfg.proxy_images)
    base = PruningTask(models.create(cfg.arch, splits.num_classes), splits, settings)
    return settings, base, [shaped_strategy(base.space, shape, t) for t in (0.3, 0.5, 0.7) for shape in SHAPES[:cfg.per_target]]


if __name__ == "__main__":
    run_script(main, Config)
