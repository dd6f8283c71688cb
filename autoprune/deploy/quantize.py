"""int8 quantization with ONNX Runtime: post-training (PTQ) or quantization-aware (QAT).

Both methods end in ONNX Runtime's static quantizer on the exported fp32 graph (BatchNorm folded):

- activations: uint8, one scale per tensor, ranges calibrated (min / max) on training batches;
- weights: int8, symmetric, one scale per output channel (Krishnamoorthi, "Quantizing deep
  convolutional networks for efficient inference: A whitepaper", 2018, recommends per-channel weights),
  in the reduced range [-64, 64], which x86 CPUs without VNNI run without saturating;
- format: QDQ (QuantizeLinear / DequantizeLinear pairs around fp32 ops, weights stored as int8),
  which ONNX Runtime fuses into int8 kernels when it loads the file.

QAT first fine-tunes a copy of the model with that rounding simulated (``autoprune.deploy.fakequant``),
then calibrates and quantizes it the same way. The output is an ``.onnx`` file; ``evaluate_file`` and
``autoprune bench`` run it in ONNX Runtime.

uint8 activations with int8 weights (U8S8) is the fastest pairing on x86 CPUs with VNNI; on older
AVX2-only CPUs it can saturate, which would show as an accuracy drop in the reported comparison.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch.nn as nn

from autoprune.data import BatchLoader, DataSplits
from autoprune.deploy.fakequant import prepare_qat, strip_qat
from autoprune.deploy.files import ModelFile, evaluate_file
from autoprune.deploy.serialize import INPUT_NAME, onnx_bytes, set_onnx_meta
from autoprune.errors import AutopruneError
from autoprune.recovery import FinetuneRecipe, FinetuneResult, finetune
from autoprune.training import evaluate
from autoprune.utils import atomic_path

METHODS = ("ptq", "qat")


@dataclass
class QuantizeResult:
    method: str
    path: Path
    fp32_bytes: int  # the fp32 ONNX graph of the same model
    int8_bytes: int
    fp32_accuracy: float  # test accuracy of the model given, in PyTorch
    int8_accuracy: float  # test accuracy of the int8 file, in ONNX Runtime
    calibration_images: int
    seconds: float
    qat: FinetuneResult | None = None

    @property
    def size_ratio(self) -> float:
        return self.fp32_bytes / self.int8_bytes

    def summary(self) -> dict[str, Any]:
        out = {"method": self.method, "path": str(self.path), "fp32_bytes": self.fp32_bytes, "int8_bytes": self.int8_bytes,
               "size_ratio": self.size_ratio, "fp32_accuracy": self.fp32_accuracy, "int8_accuracy": self.int8_accuracy,
               "calibration_images": self.calibration_images, "seconds": self.seconds}
        if self.qat is not None:
            out["qat"] = self.qat.summary()
        return out


def check_method(method: str) -> str:
    if method not in METHODS:
        raise AutopruneError(f"unknown quantization method {method!r}; use --method {' or --method '.join(METHODS)}")
    return method


def quantize(
    model: nn.Module,
    splits: DataSplits,
    path: str | os.PathLike,
    method: str = "ptq",
    calib_batches: int = 16,
    batch_size: int = 64,
    qat_epochs: int = 2,
    qat_lr: float = 1e-3,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> QuantizeResult:
    """Write an int8 ONNX version of ``model`` to ``path`` (``model`` itself is not changed).

    ``calib_batches`` training batches of ``batch_size`` images set the activation ranges; QAT
    fine-tunes for ``qat_epochs`` at learning rate ``qat_lr`` first. Accuracies are on ``splits.test``.
    """
    check_method(method)
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise AutopruneError(f"int8 models are written as ONNX files; give an output path ending in .onnx, not {path.name}")
    if calib_batches < 1:
        raise AutopruneError(f"calib_batches must be >= 1, got {calib_batches}")
    t0 = time.perf_counter()
    source, qat = model, None
    if method == "qat":
        source = prepare_qat(copy.deepcopy(model))
        # BN statistics stay as trained: re-estimating them through the fake quantizers' first,
        # still uncalibrated, ranges would only add noise.
        # a gentle cosine decay from a small lr: the weights are trained, only the rounding is new
        recipe = FinetuneRecipe(epochs=qat_epochs, lr=qat_lr, schedule="cosine", batch_size=batch_size, distill=False)
        qat = finetune(source, splits, recipe, seed=seed, recalibrate=False, progress=progress, log=log)
        strip_qat(source)
    meta = dict(meta or {})
    fp32 = onnx_bytes(source, splits.input_shape, meta)
    calib = [np.ascontiguousarray(x.numpy()) for x, _ in
             BatchLoader(splits.train, batch_size, shuffle=True, seed=seed, max_batches=calib_batches)]
    int8 = _quantize_static(fp32, calib)

    quant_info = {"method": method, "activations": "uint8 per-tensor (min/max calibration)",
                  "weights": "int8 symmetric per-channel, reduced range [-64, 64]", "format": "QDQ", "calibration_images": sum(len(b) for b in calib)}
    mf = ModelFile(path, "onnx", "int8", tuple(splits.input_shape), meta, onnx=int8)
    int8_acc = evaluate_file(mf, splits.test)
    fp32_acc = evaluate(model, splits.test)
    proto = onnx.load_model_from_string(int8)
    compact_graph(proto)
    set_onnx_meta(proto, {**meta, "input_shape": list(splits.input_shape), "format": "onnx", "precision": "int8",
                          "quantization": quant_info, "test_accuracy": int8_acc, "fp32_test_accuracy": fp32_acc})
    data = proto.SerializeToString()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return QuantizeResult(method, path, len(fp32), len(data), fp32_acc, int8_acc, quant_info["calibration_images"],
                          time.perf_counter() - t0, qat)


def compact_graph(proto: onnx.ModelProto) -> None:
    """Shorten every internal tensor name and drop node names and intermediate shape annotations.

    The quantizer names tensors after the exporter's paths plus suffixes (``/layer1/layer1.0/conv1/
    Conv_output_0_QuantizeLinear_Output``); for a small CNN those strings are ~15% of the int8 file.
    The graph's input and output keep their names, so callers see no difference.
    """
    graph = proto.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if name in keep:
            return name
        return short.setdefault(name, format(len(short), "x"))

    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    del graph.value_info[:]


def _quantize_static(fp32: bytes, batches: list[np.ndarray]) -> bytes:
    """ONNX Runtime's static quantization of the serialised fp32 graph ``fp32``; returns the int8 graph."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self._items = iter([{name: b} for b in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    with tempfile.TemporaryDirectory(prefix="autoprune-quant-") as tmp:
        src, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(fp32)
        # shape inference and graph optimisation first, as ONNX Runtime recommends before quantizing
        quant_pre_process(src, pre)
        # 7-bit weights (reduce_range): x86 CPUs without VNNI (AVX2, AVX-512 before VNNI) add u8 x s8
        # products in 16-bit registers that saturate at full range -- a small CNN lost 11 points that
        # way -- while VNNI CPUs do not; the file must score the same wherever it runs
        quantize_static(pre, out, Reader(INPUT_NAME), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        return out.read_bytes()
