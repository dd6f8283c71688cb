"""Fake quantization for quantization-aware training (QAT), matched to ONNX Runtime's int8 scheme.

QAT (Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", CVPR 2018) trains with the rounding of int8 inference simulated in the forward pass and
passes gradients straight through it (the straight-through estimator; Bengio et al. 2013).

The simulated scheme is the one ``autoprune.deploy.quantize`` asks ONNX Runtime for:

- weights: symmetric int8 in ONNX Runtime's reduced range [-64, 64] (``WEIGHT_QMAX``; see
  ``autoprune.deploy.quantize`` for why), one scale per output channel (max |w| / 64);
- activations entering every convolution and linear layer: asymmetric uint8, one scale per tensor,
  its range an exponential moving average of the batch min / max during training.

Why the raw convolution weights can be fake-quantized although ONNX Runtime quantizes them after
BatchNorm has been folded in: folding multiplies output channel ``c`` by ``gamma_c / sigma_c``, and
symmetric per-channel quantization commutes with a per-channel scale, q(a * w) = a * q(w).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

QUANTIZED_LAYERS = (nn.Conv2d, nn.Linear)
WEIGHT_QMAX = 64  # the largest int8 weight level with ONNX Runtime's reduce_range, which quantize asks for
ACT_ATTR = "input_fake_quant"


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric rounding of a weight tensor to ``WEIGHT_QMAX`` levels either side of
    zero (a parametrization)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = w.detach().abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True).clamp_min(1e-12) / WEIGHT_QMAX
        q = torch.clamp(torch.round(w / scale), -WEIGHT_QMAX, WEIGHT_QMAX) * scale
        return w + (q - w).detach()  # straight-through: forward rounds, backward is the identity


class ActivationFakeQuant(nn.Module):
    """Per-tensor asymmetric uint8 rounding with a moving-average range (always including zero)."""

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            lo, hi = x.detach().amin(), x.detach().amax()
            if not bool(self.seen):
                self.lo.copy_(lo)
                self.hi.copy_(hi)
                self.seen.fill_(True)
            else:
                self.lo.lerp_(lo, self.momentum)
                self.hi.lerp_(hi, self.momentum)
        if not bool(self.seen):
            return x
        lo, hi = self.lo.clamp(max=0.0), self.hi.clamp(min=0.0)
        scale = ((hi - lo) / 255).clamp_min(1e-12)
        zero_point = torch.round(-lo / scale)
        q = (torch.clamp(torch.round(x / scale) + zero_point, 0, 255) - zero_point) * scale
        return x + (q - x).detach()


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    return (getattr(module, ACT_ATTR)(args[0]), *args[1:])


def prepare_qat(model: nn.Module) -> nn.Module:
    """Add fake quantization to every convolution and linear layer of ``model`` (in place); returns it."""
    for module in list(model.modules()):
        if isinstance(module, QUANTIZED_LAYERS) and not parametrize.is_parametrized(module, "weight"):
            parametrize.register_parametrization(module, "weight", WeightFakeQuant())
            module.add_module(ACT_ATTR, ActivationFakeQuant())
            module.register_forward_pre_hook(_quantize_input)
    return model


def strip_qat(model: nn.Module) -> nn.Module:
    """Remove what ``prepare_qat`` added, leaving the trained float weights (in place); returns ``model``.

    The float weights are what the int8 quantizer rounds, to the values QAT trained with.
    """
    for module in list(model.modules()):
        if isinstance(module, QUANTIZED_LAYERS) and parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            # found by identity rather than by a stored handle, which a deep copy of the model would not follow
            for key in [k for k, hook in module._forward_pre_hooks.items() if hook is _quantize_input]:
                del module._forward_pre_hooks[key]
            delattr(module, ACT_ATTR)
    return model
