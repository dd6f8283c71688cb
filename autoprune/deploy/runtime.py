"""ONNX Runtime sessions and the devices a benchmark can use."""

from __future__ import annotations

import os

import torch


def devices() -> list[str]:
    """``cpu``, plus ``cuda`` where PyTorch sees a GPU."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def ort_providers(device: str = "cpu") -> list[str] | None:
    """Execution providers for ``device``; None where this ONNX Runtime build cannot run on it."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return None


def ort_session(model: bytes | str | os.PathLike, threads: int | None = None, device: str = "cpu"):
    """An inference session with all graph optimisations (ONNX Runtime fuses the int8 QDQ pairs into int8 kernels).

    ``threads`` sets the intra-op pool; None follows PyTorch's setting (``--threads``, ``OMP_NUM_THREADS``),
    which ONNX Runtime would otherwise ignore. Inter-op parallelism is off, as in PyTorch's eager inference.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only: no per-session warnings in the CLI output
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=ort_providers(device))
