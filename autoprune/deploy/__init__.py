"""Recover and ship a pruned model: fine-tuning (with distillation), export, int8 quantization, benchmarks.

- ``finetune(model, splits, epochs, teacher=None)`` -- recover accuracy (``autoprune finetune``);
- ``export(model, path, "onnx" | "torchscript", input_shape)`` -- deployable files (``autoprune export``);
- ``quantize(model, splits, "model.int8.onnx", method="ptq" | "qat")`` -- int8 ONNX (``autoprune quantize``);
- ``bench(paths, baseline=...)`` -- latency / throughput rows (``autoprune bench``);
- ``evaluate_file(path, dataset)`` -- test accuracy of any of these files.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "finetune": "autoprune.deploy.finetune",
    "FinetuneResult": "autoprune.deploy.finetune",
    "export": "autoprune.deploy.export",
    "export_onnx": "autoprune.deploy.export",
    "export_torchscript": "autoprune.deploy.export",
    "quantize": "autoprune.deploy.quantize",
    "QuantizeResult": "autoprune.deploy.quantize",
    "bench": "autoprune.deploy.bench",
    "format_table": "autoprune.deploy.bench",
    "evaluate_file": "autoprune.deploy.files",
    "open_model": "autoprune.deploy.files",
}


def __getattr__(name: str) -> Any:  # imported on first use: the CLI imports this package to build its parser
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autoprune.deploy' has no attribute {name!r}")


__all__ = sorted(_LAZY)
