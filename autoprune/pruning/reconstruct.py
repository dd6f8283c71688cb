"""Least-squares reconstruction of a pruned network from a few calibration images.

After channels are removed, each layer that consumes a pruned group sees fewer (and, once earlier
layers changed, slightly different) input channels. Following He et al. ("Channel Pruning for
Accelerating Very Deep Neural Networks", ICCV 2017) and ThiNet (Luo et al., ICCV 2017), the weights
of such a layer are refitted in closed form so that its output matches the *dense* network's output
of the same layer, restricted to the output channels the pruned layer keeps:

    min_W  || X_pruned W - Y_dense ||^2 + lam || W - W_sliced ||^2

Layers are visited in forward order and each layer's inputs ``X_pruned`` come from the pruned
network *with the earlier layers already refitted*, so a layer also compensates what the layers
before it could not recover (errors do not accumulate). Rows are output positions sampled at random
(seeded) from the calibration images; a k x k convolution's row is its receptive field at that
position (im2col, gathered only at the sampled positions, with the layer's stride, padding and
dilation). The normal equations are accumulated and solved in float64.

Which layers are refitted: every ungrouped ``nn.Conv2d`` / ``nn.Linear`` and every depthwise conv
whose input differs from the dense network's -- it consumes a pruned group, or runs after a layer
whose output changed. Grouped (non-depthwise) convolutions are left as they are: their channels
cannot be pruned (see ``PruningSpace``) and a per-group fit brings little.

Depthwise convs are refitted per channel: output channel ``c`` only sees input channel ``c``, so
``C`` independent problems of ``k*k (+1)`` unknowns, solved in one batched call -- cheap, and it lets
the depthwise layer undo a per-channel distortion left by its (refitted) producer; the 1x1
projection after it is refitted normally.

The guarantee: a layer's error on the calibration set never increases. After a layer is refitted,
its error is measured on *every* position of every calibration image (not only the sampled rows),
per output channel; a channel whose refitted weights are not strictly better gets its sliced
original weights back. (Output channel ``c`` of a layer depends only on row ``c`` of its weights,
so the layer's error is the sum of the per-channel errors and the choice is per channel.)

Intercepts: a layer with a bias gets its bias fitted as the intercept. A bias-free layer whose output
goes only into a BatchNorm (conv-BN, as in the whole zoo) gets an intercept too, stored in that BN's
``running_mean`` (exact in eval mode; in training mode BN subtracts the batch mean, so a constant
shift is irrelevant there). Any other bias-free layer is fitted without an intercept: adding a bias
would change the architecture that checkpoints and FLOPs counts describe.

How it runs: the model is traced with ``torch.fx`` and both networks are stepped node by node over
all calibration batches in lockstep, so every layer runs once per image in the whole
reconstruction; the activations that later layers still need are held for all calibration images
at once (a few hundred CIFAR images: tens to a few hundred MB). A model fx cannot trace falls back to
forward hooks: one pruned forward pass per refitted layer, stopped right after it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from autoprune.errors import AutopruneError

_CHUNK_ELEMENTS = 1 << 22  # float64 rows built at once: 32 MB


@dataclass
class LayerReconstruction:
    """One refitted layer. Errors are relative mean squared errors of the layer's output against the
    dense network's output of that layer (kept channels only), summed over every position of every
    calibration image: ``sum (y - y_dense)^2 / sum y_dense^2``."""

    name: str
    kind: str  # "conv", "depthwise" or "linear"
    error_before: float  # with the sliced original weights, on the (already reconstructed) pruned inputs
    error_after: float  # with the weights kept; never above error_before
    channels: int  # output channels of the pruned layer
    refitted: int  # output channels that kept their refitted weights
    rows: int  # sampled positions the fit used
    intercept: str  # "bias", "bn" (absorbed into the next BatchNorm's running_mean) or "none"
    seconds: float


@dataclass
class ReconstructionReport:
    layers: list[LayerReconstruction] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (layer, why it was not refitted)
    images: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        lines = [f"reconstruction on {self.images} images in {self.seconds:.1f} s",
                 f"{'layer':<32} {'kind':<9} {'error before':>12} {'after':>10} {'refitted':>9} {'rows':>7}"]
        for r in self.layers:
            lines.append(f"{r.name:<32} {r.kind:<9} {r.error_before:>12.4g} {r.error_after:>10.4g} "
                         f"{r.refitted:>4}/{r.channels:<4} {r.rows:>7}")
        lines += [f"{name:<32} skipped: {why}" for name, why in self.skipped]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Stop(Exception):
    """Raised by a forward hook once the layer of interest has run: the rest of the forward is skipped."""


@dataclass
class _Layer:
    name: str
    order: int
    kind: str
    module: nn.Module  # in the pruned model
    keep: torch.Tensor  # the dense layer's output channels the pruned layer keeps
    bn: nn.Module | None  # the BatchNorm that directly follows (absorbs the intercept of a bias-free layer)
    # state while the layer is being refitted
    weight0: torch.Tensor | None = None
    bias0: torch.Tensor | None = None
    mean0: torch.Tensor | None = None
    shift: torch.Tensor | None = None  # intercept absorbed into bn.running_mean
    target_bytes: int = 0  # size of the dense targets on the calibration set
    targets: list[torch.Tensor] | None = None  # dense output (kept channels) per calibration batch
    before: torch.Tensor | None = None  # per output channel squared error, original weights
    after: torch.Tensor | None = None  # the same with the refitted weights
    norm: torch.Tensor | None = None  # per output channel sum of y_dense^2
    gram: torch.Tensor | None = None  # normal equations: X^T X (per channel for a depthwise conv)
    cross: torch.Tensor | None = None  # X^T Y
    rows: int = 0
    seconds: float = 0.0

    @property
    def channel_dim(self) -> int:
        return -1 if self.kind == "linear" else 1

    @property
    def intercept(self) -> str:
        if self.module.bias is not None:
            return "bias"
        return "bn" if self.bn is not None else "none"


@torch.no_grad()
def reconstruct(dense: nn.Module, pruned: nn.Module, batches: Iterable[torch.Tensor | Sequence[torch.Tensor]],
                removed: Mapping[tuple[str, bool], Sequence[int]] | None = None, *, ridge: float = 1e-3,
                max_positions: int = 20_000, seed: int = 0, layers: Sequence[str] | None = None,
                cache_mb: float = 1024) -> ReconstructionReport:
    """Refit the weights of ``pruned`` in place so that its layers reproduce ``dense``'s outputs.

    :param dense: the unpruned model (not modified).
    :param pruned: the pruned copy, with the same module names (``PruningSpace.apply``'s output).
    :param batches: calibration image batches (tensors, or ``(images, labels)`` pairs as a data
        loader yields); a few hundred images is plenty. They, and the activations of all of them at
        the layer being refitted, are held in memory.
    :param removed: ``{(layer name, output side?): removed channel indices of the dense layer}``, what
        ``PruningSpace.removed_channels(strategy, criterion)`` returns; it tells which dense output
        channels each pruned layer keeps. ``None`` = no output channel was removed.
    :param ridge: Tikhonov term pulling the weights toward the sliced original ones, relative to the
        mean diagonal of ``X^T X`` (scale-free); keeps the solve well conditioned when a layer has
        more unknowns than the calibration set has positions.
    :param max_positions: sampled output positions per layer (rows of the least-squares problem),
        spread evenly over the images; bounds memory and time.
    :param seed: seed of the position sampling.
    :param layers: names of the layers to refit; default: every layer whose input differs from the
        dense network's (see the module docstring).
    :param cache_mb: for models fx cannot trace only: memory for the dense network's outputs of the
        next layers, so that it runs once per window of layers rather than once per layer.
    :returns: per refitted layer the errors before and after, refitted channels, rows and seconds.

    Both models run in eval mode (BatchNorm with its running statistics); their modes are restored.
    """
    start = time.perf_counter()
    if ridge < 0:
        raise AutopruneError(f"ridge must be >= 0, got {ridge}")
    if max_positions < 1:
        raise AutopruneError(f"max_positions must be >= 1, got {max_positions}")
    images = [b[0] if isinstance(b, (tuple, list)) else b for b in batches]
    if not images or not all(isinstance(b, torch.Tensor) and b.dim() >= 1 and len(b) for b in images):
        raise AutopruneError("reconstruction needs at least one non-empty batch of calibration images")
    modes = {m: m.training for m in (*dense.modules(), *pruned.modules())}
    dense.eval()
    pruned.eval()
    try:
        worker = _Reconstructor(dense, pruned, images, dict(removed or {}), ridge, max_positions, seed, cache_mb)
        report = worker.run(layers)
    finally:
        for m, mode in modes.items():
            m.training = mode
    report.seconds = time.perf_counter() - start
    return report


class _Reconstructor:
    def __init__(self, dense: nn.Module, pruned: nn.Module, images: list[torch.Tensor],
                 removed: dict[tuple[str, bool], Sequence[int]], ridge: float, max_positions: int, seed: int,
                 cache_mb: float) -> None:
        self.dense, self.pruned = dense, pruned
        self.dense_device, self.pruned_device = _device(dense), _device(pruned)
        self.images = images
        self.n_images = sum(len(b) for b in images)
        self.per_image = max(1, math.ceil(max_positions / self.n_images))
        self.removed = removed
        self.ridge, self.seed = float(ridge), int(seed)
        self.cache_bytes = int(cache_mb * 2**20)
        self.dense_modules = dict(dense.named_modules())
        self.report = ReconstructionReport(images=self.n_images)

    # ------------------------------------------------------------------ plan
    def _trace(self) -> tuple[list[str], dict[str, int], dict[str, int], dict[str, nn.Module]]:
        """Execution order of the pruned model's conv/linear layers, how often each runs, the size of
        its output per image, and the BatchNorm that takes each layer's output as its input (and is
        the only module that does)."""
        order: list[str] = []
        calls: dict[str, int] = {}
        sizes: dict[str, int] = {}
        outputs: dict[int, tuple[str, torch.Tensor]] = {}  # id -> (layer, output), kept alive so ids stay unique
        consumers: dict[str, list[nn.Module]] = {}
        names = {m: n for n, m in self.pruned.named_modules()}

        def layer_hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            name = names[module]
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 1:
                order.append(name)
            if isinstance(output, torch.Tensor):
                outputs[id(output)] = (name, output)
                sizes[name] = output.numel() * output.element_size()

        def consumer_hook(module: nn.Module, inputs: tuple) -> None:
            for x in inputs:
                hit = outputs.get(id(x)) if isinstance(x, torch.Tensor) else None
                if hit is not None and hit[1] is x:
                    consumers.setdefault(hit[0], []).append(module)

        handles = []
        for module in self.pruned.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                handles.append(module.register_forward_hook(layer_hook))
            if not list(module.children()):
                handles.append(module.register_forward_pre_hook(consumer_hook))
        try:
            self.pruned(self.images[0][:1].to(self.pruned_device))
        finally:
            for h in handles:
                h.remove()
        followers = {}
        for name, mods in consumers.items():
            bn = mods[0]
            if (len(mods) == 1 and isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) and bn.running_mean is not None
                    and bn.track_running_stats):
                followers[name] = bn
        return order, calls, sizes, followers

    def _plan(self, only: Sequence[str] | None) -> list[_Layer]:
        order, calls, sizes, followers = self._trace()
        pruned_modules = dict(self.pruned.named_modules())
        if only is not None:
            unknown = [n for n in only if n not in order]
            if unknown:
                raise AutopruneError(f"not conv/linear layers of the pruned model: {', '.join(unknown)}")
        plan, changed = [], False
        for i, name in enumerate(order):
            module = pruned_modules[name]
            dense_module = self.dense_modules.get(name)
            if dense_module is None or type(dense_module) is not type(module):
                raise AutopruneError(f"layer {name} of the pruned model has no counterpart in the dense model")
            kind = _kind(module)
            out_removed = sorted({int(c) for c in self.removed.get((name, True), ())})
            in_removed = self.removed.get((name, False), ())
            dense_out = dense_module.out_features if kind == "linear" else dense_module.out_channels
            out = module.out_features if kind == "linear" else module.out_channels
            if kind == "depthwise" and not out_removed:
                out_removed = sorted({int(c) for c in in_removed})
            if dense_out - len(out_removed) != out:
                raise AutopruneError(f"layer {name}: {dense_out} dense output channels minus {len(out_removed)} removed "
                                     f"is not the pruned layer's {out}; pass the removals this model was pruned with")
            wanted = (bool(in_removed) or (kind == "depthwise" and bool(out_removed)) or changed) if only is None else name in only
            changed = changed or wanted or bool(out_removed)
            if not wanted:
                continue
            if kind == "grouped":
                self.report.skipped.append((name, f"grouped convolution (groups={module.groups}): left as is"))
                continue
            if calls[name] > 1:
                self.report.skipped.append((name, f"runs {calls[name]} times per forward pass (shared weights)"))
                continue
            keep = torch.ones(dense_out, dtype=torch.bool)
            keep[out_removed] = False
            bn = followers.get(name) if module.bias is None else None
            plan.append(_Layer(name, i, kind, module, torch.nonzero(keep).flatten(), bn,
                               target_bytes=sizes.get(name, 0) * self.n_images))
        return plan

    # ------------------------------------------------------------------ main loop
    def run(self, only: Sequence[str] | None) -> ReconstructionReport:
        plan = self._plan(only)
        if not plan:
            return self.report
        steppers = _Stepper.build(self.dense, self.images, self.dense_device), _Stepper.build(
            self.pruned, self.images, self.pruned_device)
        nodes = [s.layer_nodes([layer.name for layer in plan]) if s is not None else None for s in steppers]
        if any(n is None for n in nodes) or any(
                [s.index[n] for n in ns] != sorted(s.index[n] for n in ns) for s, ns in zip(steppers, nodes)):
            return self._run_with_hooks(plan)  # not traceable, or not in the order the layers ran
        dense, pruned = steppers
        for layer, dense_node, pruned_node in zip(plan, *nodes):
            t0 = time.perf_counter()
            users = list(pruned_node.users)
            if layer.bn is not None and not (len(users) == 1 and users[0].op == "call_module"
                                             and pruned.modules.get(users[0].target) is layer.bn):
                layer.bn = None  # the output also goes elsewhere (an add, a concat): no intercept via the BN
            dense.advance(dense.index[dense_node] + 1)
            pruned.advance(pruned.index[pruned_node])
            keep = layer.keep.to(self.dense_device)
            targets = [env[dense_node].index_select(layer.channel_dim, keep).to(self.pruned_device) for env in dense.envs]
            inputs = [env[pruned_node.args[0]] for env in pruned.envs]
            self._refit(layer, inputs, targets)
            layer.seconds += time.perf_counter() - t0
        return self.report

    def _refit(self, layer: _Layer, inputs: list[torch.Tensor], targets: list[torch.Tensor]) -> None:
        """Fit, solve and check one layer, given its pruned inputs and dense targets on every batch."""
        self._start(layer)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + layer.order)
        for x, target in zip(inputs, targets):
            layer.before += _channel_sq(layer.module(x) - target, layer.channel_dim)
            layer.norm += _channel_sq(target, layer.channel_dim)
            self._accumulate(layer, x, target, generator)
        if not self._solve(layer):
            return
        layer.after = torch.zeros_like(layer.norm)
        for x, target in zip(inputs, targets):
            y = layer.module(x)
            if layer.shift is not None:
                y = y + _along(layer.shift.to(y.dtype), layer.channel_dim, y.dim())
            layer.after += _channel_sq(y - target, layer.channel_dim)
        self._settle(layer)

    # ------------------------------------------------------------------ fallback: forward hooks
    # For a model torch.fx cannot trace: one pass of the pruned model per layer, stopped by a hook
    # right after the layer (quadratic in depth, but it only needs forward hooks). A pass fits one
    # layer and checks the one refitted before it, whose inputs are final by then; that layer's
    # channels that go back to their original weights do so after this fit has seen them refitted,
    # which can only make the fit a little less precise -- the check of every layer is exact.
    # Without a graph, "the BN alone reads the layer" is judged from module calls only.
    def _run_with_hooks(self, plan: list[_Layer]) -> ReconstructionReport:
        pending: _Layer | None = None  # refitted, waiting for its check on the whole calibration set
        for i, layer in enumerate(plan):
            t0 = time.perf_counter()
            if layer.targets is None:
                self._fill_targets(plan[i:])
            self._pass(fit=layer, check=pending)
            if pending is not None:
                self._settle(pending)
            solved = self._solve(layer)
            layer.seconds += time.perf_counter() - t0
            pending = layer if solved else None
        if pending is not None:
            t0 = time.perf_counter()
            self._pass(fit=None, check=pending)
            pending.seconds += time.perf_counter() - t0
            self._settle(pending)
        return self.report

    def _fill_targets(self, upcoming: list[_Layer]) -> None:
        """One dense pass that stores the targets (dense outputs, kept channels) of the next layers, as
        many as fit in the cache budget (at least one): the dense model then runs a few times in all
        instead of once per layer."""
        window, size = [], 0
        for layer in upcoming:
            size += layer.target_bytes
            if window and size > self.cache_bytes:
                break
            window.append(layer)
            layer.targets = []
        last = window[-1]

        def hook_for(layer: _Layer):
            def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
                y = output.detach().index_select(layer.channel_dim, layer.keep.to(output.device))
                layer.targets.append(y.to(self.pruned_device))
                if layer is last:
                    raise _Stop
            return hook

        handles = [self.dense_modules[layer.name].register_forward_hook(hook_for(layer)) for layer in window]
        try:
            for x in self.images:
                try:
                    self.dense(x.to(self.dense_device))
                except _Stop:
                    pass
        finally:
            for h in handles:
                h.remove()
        missing = [layer.name for layer in window if len(layer.targets) != len(self.images)]
        if missing:
            raise AutopruneError(f"layer {missing[0]} of the dense model did not run once per forward pass; cannot reconstruct it")

    def _pass(self, fit: _Layer | None, check: _Layer | None) -> None:
        """One run of the pruned model over the calibration set, stopping after ``fit`` (or ``check``):
        accumulate ``fit``'s normal equations, and measure ``check``'s error per output channel on every
        position, with its original and with its refitted weights, on the inputs it finally gets."""
        stop = fit if fit is not None else check
        assert stop is not None
        runs = {"fit": 0, "check": 0, "batch": 0}  # hooks run per layer; the batch being run

        def check_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            target = check.targets[runs["batch"]]
            y = output.detach()
            if check.shift is not None:
                y = y + _along(check.shift.to(y.dtype), check.channel_dim, y.dim())
            check.after += _channel_sq(y - target, check.channel_dim)
            original = _forward_with(module, inputs[0].detach(), check.weight0, check.bias0)
            check.before += _channel_sq(original - target, check.channel_dim)
            runs["check"] += 1
            if fit is None:
                raise _Stop

        def fit_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            target = fit.targets[runs["batch"]]
            fit.before += _channel_sq(output.detach() - target, fit.channel_dim)
            fit.norm += _channel_sq(target, fit.channel_dim)
            self._accumulate(fit, inputs[0].detach(), target, generator)
            runs["fit"] += 1
            raise _Stop

        if check is not None:  # its errors are measured afresh: earlier layers may have changed since its fit
            check.before = torch.zeros_like(check.norm)
            check.after = torch.zeros_like(check.norm)
        if fit is not None:
            self._start(fit)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + fit.order)
        handles = []
        try:
            for layer, hook in ((check, check_hook), (fit, fit_hook)):
                if layer is not None:
                    handles.append(layer.module.register_forward_hook(hook))
            for runs["batch"], x in enumerate(self.images):
                try:
                    self.pruned(x.to(self.pruned_device))
                except _Stop:
                    pass
        finally:
            for h in handles:
                h.remove()
        if runs["fit"] != (0 if fit is None else len(self.images)) or runs["check"] != (0 if check is None else len(self.images)):
            raise AutopruneError(f"layer {stop.name} of the pruned model did not run once per forward pass; cannot reconstruct it")

    # ------------------------------------------------------------------ statistics and solve
    def _start(self, layer: _Layer) -> None:
        m = layer.module
        layer.weight0 = m.weight.detach().clone()
        layer.bias0 = None if m.bias is None else m.bias.detach().clone()
        layer.mean0 = None if layer.bn is None else layer.bn.running_mean.detach().clone()
        layer.shift = None
        device = self.pruned_device if self.pruned_device.type in ("cpu", "cuda") else torch.device("cpu")
        c = len(layer.keep)
        layer.before = torch.zeros(c, dtype=torch.float64, device=self.pruned_device)
        layer.norm = torch.zeros_like(layer.before)
        layer.rows = 0
        k = m.weight[0].numel() + (layer.intercept != "none")  # unknowns per output channel
        if layer.kind == "depthwise":
            layer.gram = torch.zeros(c, k, k, dtype=torch.float64, device=device)
            layer.cross = torch.zeros(c, k, dtype=torch.float64, device=device)
        else:
            layer.gram = torch.zeros(k, k, dtype=torch.float64, device=device)
            layer.cross = torch.zeros(k, c, dtype=torch.float64, device=device)

    def _accumulate(self, layer: _Layer, x: torch.Tensor, yd: torch.Tensor, generator: torch.Generator) -> None:
        """Add the sampled positions of one batch to the layer's normal equations."""
        m = layer.module
        batch = x.shape[0]
        if layer.kind == "linear":
            xr = x.reshape(batch, -1, x.shape[-1])
            yr = yd.reshape(batch, -1, yd.shape[-1])
            positions = xr.shape[1]
        else:
            width = yd.shape[3]
            positions = yd.shape[2] * width
            pad = m._reversed_padding_repeated_twice
            if any(pad):
                x = F.pad(x, pad, mode="constant" if m.padding_mode == "zeros" else m.padding_mode)
        b, p = _sample(batch, positions, self.per_image, generator)
        b, p = b.to(x.device), p.to(x.device)
        per_row = m.weight[0].numel() * (len(layer.keep) if layer.kind == "depthwise" else 1)
        chunk = max(1, _CHUNK_ELEMENTS // per_row)
        device = layer.gram.device
        for s in range(0, len(b), chunk):
            bs, ps = b[s:s + chunk], p[s:s + chunk]
            if layer.kind == "linear":
                rows, target = xr[bs, ps], yr[bs, ps]
            else:
                oh, ow = ps // width, ps % width
                rows, target = _patches(m, x, bs, oh, ow, depthwise=layer.kind == "depthwise"), yd[bs, :, oh, ow]
            rows, target = rows.to(device, torch.float64), target.to(device, torch.float64)
            if layer.intercept != "none":
                rows = torch.cat([rows, rows.new_ones(*rows.shape[:-1], 1)], dim=-1)
            if layer.kind == "depthwise":  # rows (n, C, k), target (n, C)
                layer.gram += torch.einsum("nck,ncl->ckl", rows, rows)
                layer.cross += torch.einsum("nck,nc->ck", rows, target)
            else:
                layer.gram += rows.T @ rows
                layer.cross += rows.T @ target
        layer.rows += len(b)

    def _solve(self, layer: _Layer) -> bool:
        """Solve the ridge problem and install the weights; False when there is nothing to fix."""
        total_norm = float(layer.norm.sum())
        before = float(layer.before.sum())
        if before <= 1e-12 * max(total_norm, 1e-30):
            self.report.skipped.append((layer.name, "its output already matches the dense network"))
            self._free(layer)
            return False
        m = layer.module
        c = len(layer.keep)
        w0 = layer.weight0.reshape(c, -1).to(layer.gram.device, torch.float64)
        n_w = w0.shape[1]
        fit_intercept = layer.intercept != "none"
        if fit_intercept:
            b0 = layer.bias0 if layer.bias0 is not None else torch.zeros(c)
            prior = torch.cat([w0, b0.reshape(c, 1).to(w0)], dim=1)  # (c, n_w + 1)
        else:
            prior = w0
        if layer.kind == "depthwise":  # c independent problems: gram (c, k, k), cross (c, k)
            diag = layer.gram.diagonal(dim1=1, dim2=2)
            lam = self.ridge * diag[:, :n_w].mean(1, keepdim=True).clamp_min(1e-12)
            reg = torch.cat([lam.expand(c, n_w), torch.zeros(c, prior.shape[1] - n_w).to(lam)], dim=1)
            a = layer.gram + torch.diag_embed(reg)
            rhs = (layer.cross + reg * prior).unsqueeze(-1)
            sol = _robust_solve(a, rhs).squeeze(-1)  # (c, k)
        else:
            diag = layer.gram.diagonal()
            lam = self.ridge * float(diag[:n_w].mean().clamp_min(1e-12))
            reg = torch.zeros(prior.shape[1], dtype=torch.float64, device=w0.device)
            reg[:n_w] = lam
            a = layer.gram + torch.diag(reg)
            sol = _robust_solve(a, layer.cross + reg[:, None] * prior.T).T  # (c, k)
        layer.gram = layer.cross = None
        if not torch.isfinite(sol).all():
            self.report.skipped.append((layer.name, "the least-squares system could not be solved"))
            self._free(layer)
            return False
        m.weight.data.copy_(sol[:, :n_w].reshape(m.weight.shape).to(m.weight))
        if fit_intercept:
            intercept = sol[:, n_w]
            if m.bias is not None:
                m.bias.data.copy_(intercept.to(m.bias))
            else:
                # A bias-free layer directly followed by BatchNorm: BN(y + s) with running_mean mu equals
                # BN(y) with running_mean mu - s in eval mode, so the intercept s costs no new parameter.
                # In training mode BN subtracts the batch mean, which removes any constant anyway.
                layer.shift = intercept.to(layer.mean0)
                layer.bn.running_mean.copy_(layer.mean0 - layer.shift)
        return True

    def _settle(self, layer: _Layer) -> None:
        """Keep the refitted weights of the channels they improve (errors from the check pass)."""
        after = layer.after
        assert after is not None and layer.before is not None
        accept = after < layer.before
        reject = ~accept
        m = layer.module
        if reject.any():
            idx = torch.nonzero(reject).flatten().to(m.weight.device)
            m.weight.data[idx] = layer.weight0[idx]
            if layer.bias0 is not None:
                m.bias.data[idx] = layer.bias0[idx]
            if layer.shift is not None:
                layer.bn.running_mean[idx] = layer.mean0[idx]
                layer.shift[idx] = 0
        norm = float(layer.norm.sum()) or 1.0
        final = torch.where(accept, after, layer.before)
        self.report.layers.append(LayerReconstruction(
            layer.name, layer.kind, float(layer.before.sum()) / norm, float(final.sum()) / norm, len(layer.keep),
            int(accept.sum()), layer.rows, layer.intercept, layer.seconds))
        self._free(layer)

    @staticmethod
    def _free(layer: _Layer) -> None:
        layer.gram = layer.cross = layer.targets = None
        layer.weight0 = layer.bias0 = layer.mean0 = None


# ---------------------------------------------------------------------- helpers
class _Stepper:
    """Runs a model traced by torch.fx node by node on every calibration batch, so that each layer is
    computed once per batch in the whole reconstruction: the values later nodes still need (the
    frontier) are kept for all batches, the others freed as soon as their last user has run."""

    def __init__(self, graph: fx.GraphModule, images: list[torch.Tensor], device: torch.device) -> None:
        self.interpreter = fx.Interpreter(graph, garbage_collect_values=False)
        self.modules = dict(graph.named_modules())
        self.nodes = list(graph.graph.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.frees: dict[int, list[fx.Node]] = {}  # node index -> the values whose last use it is
        for n in self.nodes:
            if n.users:
                self.frees.setdefault(max(self.index[u] for u in n.users), []).append(n)
        self.images, self.device = images, device
        self.envs: list[dict[fx.Node, Any]] = [{} for _ in images]
        self.pos = 0

    @classmethod
    def build(cls, model: nn.Module, images: list[torch.Tensor], device: torch.device) -> _Stepper | None:
        """None when the model cannot be traced (data-dependent control flow, ...) or takes other inputs."""
        try:
            graph = fx.symbolic_trace(model)
        except Exception:  # noqa: BLE001 -- any tracing failure means "use the forward hooks instead"
            return None
        if sum(n.op == "placeholder" for n in graph.graph.nodes) != 1:
            return None
        return cls(graph, images, device)

    def layer_nodes(self, names: list[str]) -> list[fx.Node] | None:
        """The one call of each named module, taking its input as first argument (None if not so)."""
        calls: dict[str, list[fx.Node]] = {}
        for n in self.nodes:
            if n.op == "call_module":
                calls.setdefault(n.target, []).append(n)
        found = [calls.get(name, []) for name in names]
        if any(len(c) != 1 or not c[0].args or not isinstance(c[0].args[0], fx.Node) for c in found):
            return None
        return [c[0] for c in found]

    def advance(self, stop: int) -> None:
        """Run the nodes before index ``stop`` on every batch."""
        for image, env in zip(self.images, self.envs):
            self.interpreter.env = env
            for i in range(self.pos, stop):
                n = self.nodes[i]
                if n.op == "placeholder":
                    env[n] = image.to(self.device)
                elif n.op != "output":
                    env[n] = self.interpreter.run_node(n)
                for done in self.frees.get(i, ()):
                    env.pop(done, None)
        self.interpreter.env = {}
        self.pos = max(self.pos, stop)


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if module.groups == 1:
        return "conv"
    if module.groups == module.in_channels == module.out_channels:
        return "depthwise"
    return "grouped"


def _channel_sq(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of squares per channel (dim 1 of a conv output, the last dim of a linear one), in float64."""
    if dim == -1:
        t = t.reshape(-1, t.shape[-1])
        return (t * t).sum(0, dtype=torch.float64)
    return (t * t).sum([d for d in range(t.dim()) if d != 1], dtype=torch.float64)


def _forward_with(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``module``'s output on ``x`` with other weights."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)


def _along(v: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    if dim == -1:
        return v
    shape = [1] * ndim
    shape[dim] = -1
    return v.reshape(shape)


def _sample(batch: int, positions: int, per_image: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, position) pairs: ``per_image`` distinct random positions of each image (all if fewer)."""
    if per_image >= positions:
        return (torch.arange(batch).repeat_interleave(positions), torch.arange(positions).repeat(batch))
    p = torch.rand(batch, positions, generator=generator).argsort(dim=1)[:, :per_image]
    return torch.arange(batch).repeat_interleave(per_image), p.reshape(-1)


def _patches(conv: nn.Conv2d, x_padded: torch.Tensor, b: torch.Tensor, oh: torch.Tensor, ow: torch.Tensor,
             depthwise: bool) -> torch.Tensor:
    """im2col at the given output positions of an (already padded) input: rows laid out like
    ``conv.weight.reshape(out, -1)`` -- (n, C*kh*kw), or (n, C, kh*kw) for a depthwise conv."""
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    rows = oh[:, None, None] * sh + (torch.arange(kh, device=oh.device) * dh)[None, :, None]
    cols = ow[:, None, None] * sw + (torch.arange(kw, device=ow.device) * dw)[None, None, :]
    patches = x_padded[b[:, None, None], :, rows, cols]  # (n, kh, kw, C)
    patches = patches.permute(0, 3, 1, 2).reshape(len(b), x_padded.shape[1], kh * kw)
    return patches if depthwise else patches.reshape(len(b), -1)


def _robust_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    try:
        return torch.linalg.solve(a, b)
    except RuntimeError:  # singular (ridge = 0 and too few positions): least-norm solution
        return torch.linalg.pinv(a) @ b
