"""Inference latency and throughput of model files, measured side by side in one process.

For every device and runtime, each model is warmed up, then the timed runs are interleaved --
one call of each model in turn, ``repeats`` times -- so that a change in machine load (another job,
clock scaling) hits all models alike; the median of the runs is reported. Runtimes:

- ``torch``: eval mode, ``torch.inference_mode``, channels_last inputs and weights (autoprune and
  TorchScript files); with ``fold_bn`` every BatchNorm that follows a convolution is folded into its
  weights first (``torch.fx``), as an inference deployment would, for the baseline and models alike;
- ``onnxruntime``: all graph optimisations (ONNX files, fp32 or int8; autoprune files are exported
  on the fly).
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from autoprune.deploy.files import ModelFile, open_model
from autoprune.deploy.runtime import devices, ort_providers, ort_session
from autoprune.errors import AutopruneError

RUNTIMES = ("torch", "onnxruntime")


def parse_batches(text: str) -> list[int]:
    """``"1,64"`` -> ``[1, 64]``."""
    try:
        batches = [int(b) for b in text.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise AutopruneError(f"batch sizes must be positive integers separated by commas (e.g. 1,64), got {text!r}")
    return batches


def fold_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of an eval-mode model with each Conv-BN pair folded into one convolution."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(module.eval())
    except Exception as exc:  # fx cannot trace every model (data-dependent control flow)
        raise AutopruneError(f"cannot fold BatchNorm into the convolutions of this model: {str(exc).splitlines()[0]}") from None


def _torch_runner(mf: ModelFile, batch: int, device: str, fold_bn: bool = False) -> Callable[[], Any] | None:
    if mf.module is None:
        return None
    module = mf.module.eval() if device == "cpu" else copy.deepcopy(mf.module).eval().to(device)
    if fold_bn and mf.format == "autoprune":
        module = fold_batchnorm(module)
    if mf.format == "autoprune":
        module = module.to(memory_format=torch.channels_last)
    x = torch.randn(batch, *mf.input_shape, device=device).contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run() -> None:
        with torch.inference_mode():
            module(x)
        sync()

    return run


def _ort_runner(mf: ModelFile, batch: int, device: str, threads: int | None) -> Callable[[], Any] | None:
    graph = mf.onnx_bytes()
    if graph is None or ort_providers(device) is None:
        return None
    session = ort_session(graph, threads=threads, device=device)
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((batch, *mf.input_shape), dtype=np.float32)}
    return lambda: session.run(None, feed)


def bench(
    models: Sequence[str | os.PathLike],
    baseline: str | os.PathLike | None = None,
    batches: Sequence[int] = (1, 64),
    repeats: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    runtimes: Sequence[str] = RUNTIMES,
    device_list: Sequence[str] | None = None,
    fold_bn: bool = False,
) -> list[dict[str, Any]]:
    """One row per (device, runtime, batch, model): median latency (ms), throughput (img/s), speedup.

    ``speedup`` is the baseline's median latency over the model's, on the same device, runtime and
    batch size (None without a baseline, or where the baseline cannot run on that runtime).
    ``threads`` sets PyTorch's and ONNX Runtime's CPU threads (None: PyTorch's current setting, for both).
    ``fold_bn`` folds BatchNorm into the convolutions of autoprune models in the ``torch`` runtime
    (ONNX Runtime does this itself).
    """
    if repeats < 1 or warmup < 0:
        raise AutopruneError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    unknown = sorted(set(runtimes) - set(RUNTIMES))
    if unknown:
        raise AutopruneError(f"unknown runtime {unknown[0]!r}; choose from {', '.join(RUNTIMES)}")
    files = [open_model(p) for p in ([baseline] if baseline is not None else []) + list(models)]
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    rows = []
    try:
        for device in device_list or devices():
            for runtime in runtimes:
                for batch in batches:
                    rows += _measure(files, runtime, device, batch, repeats, warmup, threads, baseline is not None, fold_bn)
    finally:
        torch.set_num_threads(previous)
    return rows


def _measure(files: list[ModelFile], runtime: str, device: str, batch: int, repeats: int, warmup: int,
             threads: int | None, has_baseline: bool, fold_bn: bool = False) -> list[dict[str, Any]]:
    runners = []
    for i, mf in enumerate(files):
        run = _torch_runner(mf, batch, device, fold_bn) if runtime == "torch" else _ort_runner(mf, batch, device, threads)
        if run is not None:
            runners.append((i, mf, run))
    for _, _, run in runners:
        for _ in range(warmup):
            run()
    times: dict[int, list[float]] = {i: [] for i, _, _ in runners}
    for _ in range(repeats):
        for i, _, run in runners:
            t0 = time.perf_counter()
            run()
            times[i].append(time.perf_counter() - t0)
    medians = {i: statistics.median(t) for i, t in times.items()}
    base = medians.get(0) if has_baseline else None
    folded = fold_bn and runtime == "torch"
    return [{"model": mf.name, "role": "baseline" if has_baseline and i == 0 else "model", "format": mf.format,
             "precision": mf.precision, "runtime": runtime + (" (BN folded)" if folded and mf.format == "autoprune" else ""), "device": device, "threads": torch.get_num_threads(), "batch": batch,
             "latency_ms": 1000 * medians[i], "latency_ms_min": 1000 * min(times[i]),
             "throughput": batch / medians[i], "speedup": None if base is None else base / medians[i]}
            for i, mf, _ in runners]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| model | precision | runtime | device | batch | latency (ms) | throughput (img/s) | speedup |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speedup = "—" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        lines.append(f"| {r['model']} | {r['precision']} | {r['runtime']} | {r['device']} | {r['batch']} | "
                     f"{r['latency_ms']:.2f} | {r['throughput']:.0f} | {speedup} |")
    return "\n".join(lines)
