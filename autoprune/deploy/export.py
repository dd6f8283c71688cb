"""Export a model to ONNX (with a dynamic batch axis) or TorchScript, with its metadata embedded.

ONNX goes through PyTorch's TorchScript-based exporter (``dynamo=False``): the torch.export-based
default needs the optional ``onnxscript`` package, and the TorchScript-based one, in eval mode, folds
every BatchNorm into the preceding convolution -- the graph ONNX Runtime's int8 quantizer expects.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from autoprune.deploy.files import META_KEY, open_model
from autoprune.errors import AutopruneError
from autoprune.utils import atomic_path

FORMATS = ("onnx", "torchscript")
OPSET = 17  # QuantizeLinear/DequantizeLinear with per-channel axes need >= 13
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# Checkpoint metadata left out of exported files: the per-epoch training log is kilobytes of JSON
# that a deployed model does not need (it stays in the .pt file) and that would blur size ratios.
_NOT_EXPORTED = ("history",)


def export_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (meta or {}).items() if k not in _NOT_EXPORTED}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise AutopruneError(f"unknown export format {fmt!r}; use --format {' or --format '.join(FORMATS)}")
    return fmt


@contextmanager
def _inference(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration of an export (BN uses running statistics), then the caller's mode again."""
    was_training = model.training
    model.eval()
    # Both exporters announce their own deprecation in favour of torch.export; the warnings say
    # nothing about this model, so they are kept out of the CLI's output.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        try:
            yield model
        finally:
            model.train(was_training)


def _example(input_shape: Sequence[int], batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))


def onnx_bytes(model: nn.Module, input_shape: Sequence[int], meta: dict[str, Any] | None = None) -> bytes:
    """The model as a serialised ONNX graph: input ``input`` (N, C, H, W), output ``logits``, N dynamic."""
    import onnx

    buffer = io.BytesIO()
    with _inference(model):
        torch.onnx.export(model, (_example(input_shape),), buffer, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    proto = onnx.load_model_from_string(buffer.getvalue())
    set_onnx_meta(proto, {**(meta or {}), "input_shape": list(input_shape)})
    return proto.SerializeToString()


def set_onnx_meta(proto: Any, meta: dict[str, Any]) -> None:
    """Store ``meta`` as JSON in the ONNX model's metadata properties (replacing an earlier entry)."""
    for prop in [p for p in proto.metadata_props if p.key == META_KEY]:
        proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(export_meta(meta), default=str)


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape: Sequence[int], meta: dict[str, Any] | None = None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(onnx_bytes(model, input_shape, {**(meta or {}), "format": "onnx", "precision": "fp32"}))


def export_torchscript(model: nn.Module, path: str | os.PathLike, input_shape: Sequence[int],
                       meta: dict[str, Any] | None = None) -> None:
    """Trace the model (tracing handles every zoo and torchvision model; scripting does not)."""
    extra = {META_KEY: json.dumps({**export_meta(meta), "input_shape": list(input_shape), "format": "torchscript",
                                   "precision": "fp32"}, default=str)}
    with _inference(model):
        traced = torch.jit.trace(model, _example(input_shape), check_trace=False)
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
    with _inference(model):
        expected = model(x).numpy()
        mf = open_model(path)
        if mf.module is not None:
            got = mf.module(x).numpy()
        else:
            session = ort_session(mf.onnx_bytes())
            got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(expected - got).max())
