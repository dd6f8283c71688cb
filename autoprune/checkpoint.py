"""Safe model files: architecture name + per-layer channel counts + weights, loaded with ``weights_only``.

A file holds no pickled code. Loading rebuilds the zoo architecture, shrinks every layer to the
saved channel counts (so pruned models load the same way as dense ones) and loads the weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from autoprune.errors import AutopruneError
from autoprune.utils import atomic_path, load_tensors

FORMAT = "autoprune.model/1"
# Module attributes that describe channel counts; pruning changes them, loading restores them.
SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features")


def layer_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """Channel-count attributes of every module that has any (convs, linears, norms)."""
    shapes = {}
    for name, module in model.named_modules():
        attrs = {a: int(getattr(module, a)) for a in SHAPE_ATTRS if isinstance(getattr(module, a, None), int)}
        if attrs:
            shapes[name] = attrs
    return shapes


def save_model(path: str | os.PathLike, model: nn.Module, arch: str, num_classes: int, meta: dict[str, Any] | None = None,
               in_channels: int = 3, half: bool = False) -> None:
    """Write ``model`` to ``path`` atomically with its architecture, channel counts and metadata.

    ``half`` stores float32 tensors as float16 (half the file; e.g. for VGG-16, 59 MB in float32);
    ``load_model`` returns float32 either way."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}
    payload = {
        "format": FORMAT,
        "stored_dtype": "float16" if half else "float32",
        "arch": arch,
        "num_classes": int(num_classes),
        "in_channels": int(in_channels),
        "layers": layer_shapes(model),
        "state_dict": state,
        # a JSON round trip keeps only plain types, which ``weights_only`` loading accepts
        "meta": json.loads(json.dumps(meta or {}, default=str)),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a model file without building the model."""
    path = Path(path)
    try:
        payload = load_tensors(path, "checkpoint")
    except AutopruneError as exc:
        if path.is_file():  # the file is there but cannot be read safely: say what it should be
            raise AutopruneError(f"{path} is not a readable autoprune model file: {exc}") from None
        raise
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise AutopruneError(f"{path} is not an autoprune model file (no '{FORMAT}' header); "
                             "train one with `autoprune train` or save one with autoprune.save_model")
    for key in ("arch", "num_classes", "layers", "state_dict"):
        if key not in payload:
            raise AutopruneError(f"{path} is damaged: the '{key}' entry is missing")
    return payload


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in ``path``; returns ``(model, payload)`` where payload has arch/meta."""
    from autoprune import models

    payload = read_checkpoint(path)
    model = models.create(payload["arch"], num_classes=payload["num_classes"], in_channels=payload.get("in_channels", 3))
    try:
        restore_shapes(model, payload["layers"], payload["state_dict"])
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, KeyError, AttributeError) as exc:
        raise AutopruneError(f"{path} does not match architecture {payload['arch']!r}: {_mismatch(exc)}") from None
    model.eval()
    return model, payload


def _mismatch(exc: Exception) -> str:
    """The gist of a failed ``load_state_dict``/shape restore in one line: the keys or the size that differ."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines[1:] if line.startswith(("Missing", "Unexpected", "size mismatch"))),
                  lines[0] if lines else exc.__class__.__name__)
    return detail[:240]


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """The model stored in ``path`` -- pruned or dense -- rebuilt from its base architecture and per-layer
    channel counts, weights loaded, in eval mode. Its metadata (target, FLOPs, accuracy, ...) is on
    ``model.autoprune_meta``. Reads with ``torch.load(weights_only=True)``: no code in the file runs."""
    model, payload = load_model(path)
    model.autoprune_meta = dict(payload.get("meta", {}), arch=payload["arch"], num_classes=payload["num_classes"])
    return model


def restore_shapes(model: nn.Module, shapes: dict[str, dict[str, int]], state_dict: dict[str, torch.Tensor]) -> None:
    """Resize ``model``'s layers in place to the channel counts in ``shapes`` / tensors in ``state_dict``."""
    modules = dict(model.named_modules())
    for name, attrs in shapes.items():
        module = modules[name]
        for attr, value in attrs.items():
            setattr(module, attr, value)
    for key, tensor in state_dict.items():
        owner_name, _, leaf = key.rpartition(".")
        owner = modules[owner_name]
        current = getattr(owner, leaf)
        if isinstance(current, torch.Tensor) and current.shape != tensor.shape:
            replacement = torch.empty(tensor.shape, dtype=current.dtype)
            if isinstance(current, nn.Parameter):
                setattr(owner, leaf, nn.Parameter(replacement, requires_grad=current.requires_grad))
            else:
                owner._buffers[leaf] = replacement
