"""FLOPs: the reference count (``count_flops``) and the per-layer table behind the closed form.

"FLOPs" here follows the pruning literature: multiply-accumulates (MACs) of convolution and linear
layers, per image. ``torch.utils.flop_counter.FlopCounterMode`` counts 2 x MACs over the batch, so
``count_flops = FlopCounterMode total / 2 / batch``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """MACs per image of ``model`` on inputs shaped like ``example_inputs`` (the reference count)."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example_inputs)
    model.train(was_training)
    return counter.get_total_flops() // 2 // example_inputs.shape[0]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class LayerRecord:
    """One conv or linear layer as seen in a forward pass: what its MACs depend on."""

    name: str
    module: nn.Module
    in_channels: int
    out_channels: int
    groups: int
    kernel: int  # kh * kw (1 for linear)
    positions: int  # output positions per image (H*W for conv, tokens for linear)
    stride: int
    in_size: int  # input feature-map side (1 for linear)

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def grouped(self) -> bool:
        return self.groups > 1 and not self.depthwise

    @property
    def macs(self) -> int:
        in_per_group = 1 if self.depthwise else self.in_channels // self.groups
        return self.out_channels * in_per_group * self.kernel * self.positions

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters(recurse=False))


def trace_layers(model: nn.Module, example_inputs: torch.Tensor) -> tuple[list[LayerRecord], list[nn.Module], torch.Tensor]:
    """Run one forward pass and record every conv/linear layer, in execution order.

    Returns the records, every module in execution order, and the model output.
    """
    records: list[LayerRecord] = []
    executed: list[nn.Module] = []
    names = {m: n for n, m in model.named_modules()}
    seen: set[nn.Module] = set()

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        executed.append(module)
        if module in seen or not isinstance(output, torch.Tensor):
            return
        seen.add(module)
        batch = inputs[0].shape[0]
        if isinstance(module, nn.Conv2d):
            records.append(LayerRecord(
                names[module], module, module.in_channels, module.out_channels, module.groups,
                module.kernel_size[0] * module.kernel_size[1], output.shape[2] * output.shape[3],
                module.stride[0], inputs[0].shape[-1]))
        elif isinstance(module, nn.Linear):
            records.append(LayerRecord(
                names[module], module, module.in_features, module.out_features, 1, 1,
                output.numel() // output.shape[-1] // batch, 1, 1))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return records, executed, out
