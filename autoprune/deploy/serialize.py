"""A model as a serialised ONNX graph, and the conventions every exported file shares.

ONNX goes through PyTorch's TorchScript-based exporter (``dynamo=False``): the torch.export-based
default needs the optional ``onnxscript`` package, and the TorchScript-based one, in eval mode, folds
every BatchNorm into the preceding convolution -- the graph ONNX Runtime's int8 quantizer expects.

Exported files carry the source model's metadata as JSON under ``META_KEY``: in the ONNX metadata
properties, and in the TorchScript archive's ``extra/`` folder.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

META_KEY = "autoprune"  # name of the JSON metadata entry inside exported files
OPSET = 17  # QuantizeLinear/DequantizeLinear with per-channel axes need >= 13
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# Checkpoint metadata left out of exported files: the per-epoch training log is kilobytes of JSON
# that a deployed model does not need (it stays in the .pt file) and that would blur size ratios.
_NOT_EXPORTED = ("history",)


def export_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (meta or {}).items() if k not in _NOT_EXPORTED}


@contextmanager
def inference(model: nn.Module) -> Iterator[nn.Module]:
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


def example_batch(input_shape: Sequence[int], batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))


def onnx_bytes(model: nn.Module, input_shape: Sequence[int], meta: dict[str, Any] | None = None) -> bytes:
    """The model as a serialised ONNX graph: input ``input`` (N, C, H, W), output ``logits``, N dynamic."""
    import onnx

    buffer = io.BytesIO()
    with inference(model):
        torch.onnx.export(model, (example_batch(input_shape),), buffer, dynamo=False, opset_version=OPSET,
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
