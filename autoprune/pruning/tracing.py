"""Channel dependencies of a model, traced with torch-pruning, with channel-reordering reshapes made opaque.

torch-pruning follows channels through reshapes only where a reshape flattens a feature map for a
linear layer; every other op it does not know (a transpose, a permute, ...) it treats as element-wise,
i.e. as keeping channel ``i`` at position ``i``. A channel shuffle -- ``view`` to (N, g, C/g, H, W),
``transpose``, ``view`` back -- breaks both assumptions: torch-pruning either fails while building the
graph or, worse, would remove channel ``i`` of the layer after the shuffle for channel ``i`` before it.

So the forward pass that torch-pruning traces runs under a recorder that notes every reshape which
moves the channel axis (anything but keeping axes 0 and 1, or flattening a feature map to (N, C*H*W))
and every native channel/pixel shuffle. Each of those autograd nodes becomes an ``OpaqueReshape`` in the
graph: an op with input and output channels of its own and no dependency between them, so channel
groups stop there, and every group that reaches one holds it -- ``PruningSpace`` excludes those groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.overrides import TorchFunctionMode

from autoprune.errors import AutopruneError

# Reshapes whose effect on the channel axis is read from the input and output shapes.
_RESHAPES = {torch.Tensor.view, torch.Tensor.view_as, torch.Tensor.reshape, torch.Tensor.reshape_as, torch.reshape,
             torch.Tensor.flatten, torch.flatten, torch.Tensor.unflatten, torch.unflatten}
# Ops that always reorder or fold channels.
_SHUFFLES = {getattr(torch, n) for n in ("channel_shuffle", "native_channel_shuffle", "pixel_shuffle", "pixel_unshuffle")
             if hasattr(torch, n)}


class OpaqueReshape(nn.Module):
    """Stands in the dependency graph for a reshape that reorders channels; never pruned."""

    def __init__(self, call: str, where: str, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        super().__init__()
        self.call, self.where = call, where
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    @property
    def in_channels(self) -> int | None:
        return self.in_shape[1] if len(self.in_shape) > 1 else None

    @property
    def out_channels(self) -> int | None:
        return self.out_shape[1] if len(self.out_shape) > 1 else None

    def describe(self) -> str:
        place = f" in {self.where}" if self.where else ""
        return f"{self.call} {list(self.in_shape)} -> {list(self.out_shape)}{place}"

    def __repr__(self) -> str:
        return f"OpaqueReshape({self.describe()})"


class _OpaquePruner(tp.pruner.BasePruningFunc):
    """Distinct in/out pruning functions: torch-pruning couples no channel across the op."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise AutopruneError(f"the channels of {layer!r} cannot be pruned")

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise AutopruneError(f"the channels of {layer!r} cannot be pruned")

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int | None:
        return layer.in_channels


def _moves_channels(in_shape: torch.Size, out_shape: torch.Size) -> bool:
    """True unless the reshape keeps the batch and channel axes, or flattens (N, C[, H, W]) to (N, C*H*W)
    (the one flatten torch-pruning maps channel by channel)."""
    if len(in_shape) >= 2 and len(out_shape) >= 2 and in_shape[:2] == out_shape[:2]:
        return False
    return not (len(in_shape) in (2, 4) and len(out_shape) == 2 and in_shape[0] == out_shape[0])


class _ReshapeRecorder(TorchFunctionMode):
    """Notes the autograd node of every channel-reordering op run under it, with the module running it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.opaque: dict[Any, OpaqueReshape] = {}
        self._names = {m: n for n, m in model.named_modules()}
        self._stack: list[str] = []
        self._model = model
        self._handles: list[Any] = []

    def __enter__(self) -> _ReshapeRecorder:
        def enter(module: nn.Module, inputs: Any) -> None:
            self._stack.append(self._names[module])

        def leave(module: nn.Module, inputs: Any, output: Any) -> None:
            self._stack.pop()

        for m in self._model.modules():
            self._handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        super().__exit__(*exc)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if (func in _RESHAPES or func in _SHUFFLES) and args and isinstance(args[0], torch.Tensor) \
                and isinstance(out, torch.Tensor) and out.grad_fn is not None and out.grad_fn is not args[0].grad_fn:
            x = args[0]
            if func in _SHUFFLES or _moves_channels(x.shape, out.shape):
                where = self._stack[-1] if self._stack else ""
                self.opaque[out.grad_fn] = OpaqueReshape(func.__name__, where, x.shape, out.shape)
        return out


class _Graph(tp.DependencyGraph):
    """torch-pruning's graph, with the recorded autograd nodes mapped to their ``OpaqueReshape``."""

    def __init__(self, recorder: _ReshapeRecorder) -> None:
        super().__init__()
        self._recorder = recorder

    def _trace_computational_graph(self, module2node: dict, output: Any, gradfn2module: dict, reused: Any,
                                   visited: Any = None) -> dict:
        gradfn2module.update(self._recorder.opaque)
        return super()._trace_computational_graph(module2node, output, gradfn2module, reused,
                                                  visited=set() if visited is None else visited)


def build_dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's ``DependencyGraph`` of ``model``, with channel-reordering reshapes as ``OpaqueReshape`` nodes."""
    recorder = _ReshapeRecorder(model)

    def forward(m: nn.Module, x: torch.Tensor) -> Any:
        with recorder:
            return m(x)

    graph = _Graph(recorder)
    return graph.build_dependency(model, example_inputs=example_inputs, forward_fn=forward,
                                  customized_pruners={OpaqueReshape: _OpaquePruner()})


class PruningCall:
    """A torch-pruning dependency's pruning function, replayable on a copy of the model: called as
    ``call(layer, idxs)``, it first sets the dimension the target is pruned along, as torch-pruning's
    ``Dependency`` does (its pruners are shared, so the last use would decide it otherwise)."""

    def __init__(self, dep: Any) -> None:
        self.fn = dep.handler
        self.dim = dep.target.pruning_dim

    def __call__(self, layer: Any, idxs: Sequence[int]) -> Any:
        pruner = getattr(self.fn, "__self__", None)
        if pruner is not None:
            pruner.pruning_dim = self.dim
        return self.fn(layer, idxs)

    def __repr__(self) -> str:
        return f"PruningCall({getattr(self.fn, '__qualname__', self.fn)}, dim={self.dim})"
