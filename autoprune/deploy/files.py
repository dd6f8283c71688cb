"""Open any model file the deployment commands produce or read, and measure its test accuracy.

Three formats, told apart by content rather than by suffix:

- ``autoprune``: the project's safe model file (``save_model``), rebuilt with ``load_model``;
- ``torchscript``: a ``torch.jit.save`` archive from ``autoprune export --format torchscript``;
- ``onnx``: an fp32 file from ``autoprune export`` or an int8 file from ``autoprune quantize``.

Exported files carry the source model's metadata (data set, input shape, ...) as JSON: in the ONNX
metadata properties and in the TorchScript archive's ``extra/`` folder, under ``META_KEY``.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from autoprune.data import BatchLoader, ImageDataset, load_dataset
from autoprune.deploy.serialize import META_KEY, onnx_bytes
from autoprune.errors import AutopruneError
from autoprune.utils import check_readable

INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


@dataclass
class ModelFile:
    """A model file opened for inference, whatever its format."""

    path: Path
    format: str  # "autoprune", "torchscript" or "onnx"
    precision: str  # "fp32" or "int8"
    input_shape: tuple[int, ...]  # (C, H, W), without the batch axis
    meta: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None  # autoprune and TorchScript files
    onnx: bytes | None = None  # ONNX files; autoprune files are exported on first use

    @property
    def name(self) -> str:
        return self.path.name

    def onnx_bytes(self) -> bytes | None:
        """The model as a serialised ONNX graph, or None where it cannot be had (TorchScript)."""
        if self.onnx is None and self.format == "autoprune":
            self.onnx = onnx_bytes(self.module, self.input_shape, self.meta)
        return self.onnx


def open_model(path: str | os.PathLike) -> ModelFile:
    """Open an autoprune, TorchScript or ONNX model file."""
    path = check_readable(path, "model file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        # torch.jit.save archives hold the model's code; torch.save archives (ours) hold none
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return _open_torchscript(path)
        return _open_autoprune(path)
    return _open_onnx(path)


def _open_autoprune(path: Path) -> ModelFile:
    from autoprune.checkpoint import load_model

    model, payload = load_model(path)
    meta = dict(payload["meta"])
    shape = tuple(meta.get("input_shape", [payload.get("in_channels", 3), 32, 32]))
    meta.setdefault("arch", payload["arch"])
    return ModelFile(path, "autoprune", "fp32", shape, meta, module=model)


def _open_torchscript(path: Path) -> ModelFile:
    extra = {META_KEY: ""}
    try:
        with warnings.catch_warnings():  # torch.jit.load announces its own deprecation; nothing about this file
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # noqa: BLE001 -- a damaged archive becomes one clear line
        raise AutopruneError(f"{path} is not a readable TorchScript file ({_first_line(exc)}); "
                             "re-create it with `autoprune export --format torchscript`") from None
    meta = _parse_meta(extra[META_KEY], path)
    if "input_shape" not in meta:
        raise AutopruneError(f"{path} has no autoprune metadata (input shape); export it with `autoprune export`")
    return ModelFile(path, "torchscript", "fp32", tuple(meta["input_shape"]), meta, module=module.eval())


def _open_onnx(path: Path) -> ModelFile:
    import onnx

    data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 -- protobuf decode errors, failed checks...
        raise AutopruneError(f"{path} is not an autoprune model, TorchScript or ONNX file ({_first_line(exc)}); "
                             "pass a file written by `autoprune train`, `export` or `quantize`") from None
    if not model.graph.node or len(model.graph.input) != 1:
        raise AutopruneError(f"{path} is not an image classifier with one input; pass a file written by `autoprune export`")
    props = {p.key: p.value for p in model.metadata_props}
    meta = _parse_meta(props.get(META_KEY, ""), path)
    if "input_shape" in meta:
        shape = tuple(meta["input_shape"])
    else:  # a foreign ONNX file: take the static (C, H, W) from the graph's input
        dims = model.graph.input[0].type.tensor_type.shape.dim[1:]
        if not dims or any(d.dim_value <= 0 for d in dims):
            raise AutopruneError(f"{path} has no fixed input shape (C, H, W); export it with `autoprune export`")
        shape = tuple(d.dim_value for d in dims)
    int8 = any(n.op_type in INT8_OPS for n in model.graph.node)
    return ModelFile(path, "onnx", "int8" if int8 else "fp32", shape, meta, onnx=data)


def _parse_meta(text: str, path: Path) -> dict[str, Any]:
    if not text:
        return {}
    try:
        meta = json.loads(text)
    except ValueError:
        raise AutopruneError(f"{path} has damaged autoprune metadata; re-export it") from None
    return meta if isinstance(meta, dict) else {}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else exc.__class__.__name__


def evaluate_file(path: str | os.PathLike | ModelFile, data: ImageDataset | str, data_dir: str | None = None,
                  batch_size: int = 256, threads: int | None = None) -> float:
    """Top-1 accuracy (percent) of a model file on ``data`` (a data set, or a name whose test split is used).

    autoprune and TorchScript files run in PyTorch, ONNX files (fp32 or int8) in ONNX Runtime on the CPU.
    """
    from autoprune.deploy.runtime import ort_session

    mf = path if isinstance(path, ModelFile) else open_model(path)
    dataset = load_dataset(data, data_dir, "test") if isinstance(data, str) else data
    if tuple(dataset.input_shape) != tuple(mf.input_shape):
        raise AutopruneError(f"{mf.name} takes inputs of shape {tuple(mf.input_shape)} but {dataset.name} images are "
                             f"{tuple(dataset.input_shape)}; evaluate it on the data set it was trained on")
    loader = BatchLoader(dataset, batch_size)
    correct = total = 0
    if mf.module is not None:
        mf.module.eval()
        with torch.inference_mode():
            for x, y in loader:
                correct += (mf.module(x).argmax(1) == y).sum().item()
                total += len(y)
    else:
        session = ort_session(mf.onnx_bytes(), threads=threads)
        name = session.get_inputs()[0].name
        for x, y in loader:
            logits = session.run(None, {name: np.ascontiguousarray(x.numpy())})[0]
            correct += int((logits.argmax(1) == y.numpy()).sum())
            total += len(y)
    return 100.0 * correct / max(total, 1)
