"""Export a model to ONNX (with a dynamic batch axis) or TorchScript, with its metadata embedded.

The ONNX graph itself, and the conventions every exported file shares (eval mode, metadata under
``META_KEY``), are in ``autoprune.deploy.serialize``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from autoprune.deploy.files import open_model
from autoprune.deploy.serialize import META_KEY, example_batch, export_meta, inference, onnx_bytes
from autoprune.errors import AutopruneError
from autoprune.utils import atomic_path

FORMATS = ("onnx", "torchscript")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise AutopruneError(f"unknown export format {fmt!r}; use --format {' or --format '.join(FORMATS)}")
    return fmt


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape: Sequence[int], meta: dict[str, Any] | None = None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(onnx_bytes(model, input_shape, {**(meta or {}), "format": "onnx", "precision": "fp32"}))


def export_torchscript(model: nn.Module, path: str | os.PathLike, input_shape: Sequence[int],
                       meta: dict[str, Any] | None = None) -> None:
    """Trace the model (tracing handles every zoo and torchvision model; scripting does not)."""
    extra = {META_KEY: json.dumps({**export_meta(meta), "input_shape": list(input_shape), "format": "torchscript",
                                   "precision": "fp32"}, default=str)}
    with inference(model):
        traced = torch.jit.trace(model, example_batch(input_shape), check_trace=False)
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files=extra)


def export(model: nn.Module, path: str | os.PathLike, fmt: str, input_shape: Sequence[int],
           meta: dict[str, Any] | None = None) -> None:
    """Write ``model`` to ``path`` in ``fmt`` (``onnx`` or ``torchscript``)."""
    check_format(fmt)
    (export_onnx if fmt == "onnx" else export_torchscript)(model, path, input_shape, meta)


def max_abs_difference(model: nn.Module, path: str | os.PathLike, x: torch.Tensor) -> float:
    """Largest absolute difference between ``model``'s logits and the exported file's on the batch ``x``."""
    from autoprune.deploy.runtime import ort_session

    x = x.contiguous()
    with inference(model):
        expected = model(x).numpy()
        mf = open_model(path)
        if mf.module is not None:
            got = mf.module(x).numpy()
        else:
            session = ort_session(mf.onnx_bytes())
            got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(expected - got).max())
