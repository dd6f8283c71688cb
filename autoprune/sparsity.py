"""Sparsity-regularised training of BatchNorm scaling factors: preparing a network for channel pruning.

Each BatchNorm channel ``c`` multiplies its normalised activation by a learnable scale ``gamma_c``; a
channel whose scale is near zero contributes almost nothing and can be removed at little cost.

Network slimming (Liu et al., "Learning Efficient Convolutional Networks through Network Slimming",
ICCV 2017) adds an L1 (lasso) penalty ``lambda * sum_c |gamma_c|`` over every BatchNorm layer to the
training loss. It is applied as a subgradient after the backward pass: ``grad(gamma_c) += lambda *
sign(gamma_c)``. At pruning time one *global* threshold over all layers decides which channels go. In
this library, prune a sparsified model with the ``bn_scale`` criterion (``--criterion bn_scale``); note
that the ``global`` ranking divides each group's scores by their mean before ranking them globally.

A single global threshold can empty a layer whose scales are all small. Filter-elasticity channel
pruning (2024) instead uses sparse training of the channel scales with *local, dynamic thresholds per
layer*, so that no layer is over-pruned. This module implements that idea with the following rule
(``dynamic_thresholds=True``), which is this library's own concrete form of it:

For a BatchNorm layer ``l`` with ``C_l`` channels and scales ``a = |gamma_l|``:

1. ``k_l = max(1, ceil(floor * C_l))`` (``floor`` = 0.25 by default) and
   ``t_l = min(ratio * mean(a), a_(k_l))``, where ``a_(k)`` is the k-th largest of ``a``
   (``ratio`` = 1 by default: the layer's mean |gamma|). Hence at least ``k_l`` channels -- a
   fraction ``floor`` of the layer -- have ``|gamma| >= t_l``, whatever the distribution.
2. During an epoch the L1 subgradient is added only to channels with ``|gamma_c| < t_l``:
   ``grad(gamma_c) += lambda * sign(gamma_c) * [|gamma_c| < t_l]``. Channels at or above their layer's
   threshold feel no penalty, so the penalty never pushes them down; channels below it are driven to zero.
3. ``t_l`` is recomputed by rule 1 from the layer's own current scales at the end of every epoch
   (``on_epoch_end``); before the first epoch it is computed from the starting weights. As channels
   below the threshold shrink, the layer's mean falls and so does ``t_l``, so the penalised set adapts
   per layer instead of growing towards a global quota.

After every recomputation each layer therefore keeps at least ``floor`` of its channels at or above
its threshold, and the penalty can never drive a whole layer to zero. The floor binds in skewed layers,
where a few large scales lift the mean above most of the others. On a freshly initialised network
(every ``gamma = 1``, so ``t_l = 1``) the channels whose scale dips below 1 after the first steps are
the ones penalised; with ``ratio < 1`` nothing is penalised until the scales have spread. Sparse
training from a trained base is ``autoprune train --init base.pt --sparsity bn-l1``.

Without ``dynamic_thresholds`` every channel of every layer is penalised (plain slimming).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from autoprune.errors import AutopruneError
from autoprune.utils import save_figure

METHODS = ("bn-l1",)
NEAR_ZERO = 1e-2  # a scale below this counts as (nearly) zero in the statistics
DEFAULT_THRESHOLD_RATIO = 1.0  # t_l <= ratio * mean |gamma| of the layer
DEFAULT_FLOOR = 0.25  # share of each layer's channels always at or above its threshold


def check_method(method: str) -> str:
    """Return ``method`` if it is a known sparsity method; a clear error otherwise."""
    if method not in METHODS:
        raise AutopruneError(f"unknown sparsity method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The BatchNorm layers with learnable scales, by module name, in module order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and m.weight.requires_grad]


def bn_scales(model: nn.Module) -> dict[str, np.ndarray]:
    """A snapshot of ``|gamma|`` per BatchNorm layer (float64 arrays)."""
    return {name: m.weight.detach().abs().double().cpu().numpy() for name, m in bn_layers(model)}


def layer_threshold(abs_scales: torch.Tensor, ratio: float = DEFAULT_THRESHOLD_RATIO, floor: float = DEFAULT_FLOOR) -> float:
    """Rule 1 of the module docstring: ``min(ratio * mean(a), k-th largest of a)``, ``k = max(1, ceil(floor * C))``."""
    a = abs_scales.detach().flatten().float()
    k = max(1, math.ceil(floor * a.numel()))
    kth = torch.topk(a, k).values[-1]
    return float(torch.minimum(ratio * a.mean(), kth))


class SparsityRegularizer:
    """L1 penalty on BatchNorm scales (network slimming), optionally with per-layer dynamic thresholds.

    Call ``after_backward(model)`` between ``loss.backward()`` and ``optimizer.step()`` and
    ``on_epoch_end(model)`` after every epoch. ``state_dict()`` holds everything needed to resume.
    """

    def __init__(self, method: str = "bn-l1", lam: float = 1e-4, dynamic_thresholds: bool = False,
                 threshold_ratio: float = DEFAULT_THRESHOLD_RATIO, floor: float = DEFAULT_FLOOR) -> None:
        self.method = check_method(method)
        if not (lam >= 0 and math.isfinite(lam)):
            raise AutopruneError(f"the sparsity penalty lambda must be a finite number >= 0, got {lam}")
        if not threshold_ratio > 0:
            raise AutopruneError(f"the threshold ratio must be > 0, got {threshold_ratio}")
        if not 0 < floor <= 1:
            raise AutopruneError(f"the floor fraction must be in (0, 1], got {floor}")
        self.lam = float(lam)
        self.dynamic_thresholds = bool(dynamic_thresholds)
        self.threshold_ratio = float(threshold_ratio)
        self.floor = float(floor)
        self.thresholds: dict[str, float] = {}

    def settings(self) -> dict[str, Any]:
        return {"method": self.method, "lambda": self.lam, "dynamic_thresholds": self.dynamic_thresholds,
                "threshold_ratio": self.threshold_ratio, "floor": self.floor}

    def check_model(self, model: nn.Module) -> None:
        if not bn_layers(model):
            raise AutopruneError(f"sparsity {self.method!r} penalises BatchNorm scales, but the model has no "
                                 "BatchNorm layer with learnable scales")

    def _threshold(self, name: str, m: nn.Module) -> float:
        t = self.thresholds.get(name)
        if t is None:  # first use (or a layer the saved state does not know): from the current scales
            t = self.thresholds[name] = layer_threshold(m.weight.detach().abs(), self.threshold_ratio, self.floor)
        return t

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        """Add the L1 subgradient ``lambda * sign(gamma)`` (only below each layer's threshold when dynamic)."""
        for name, m in bn_layers(model):
            t = self._threshold(name, m) if self.dynamic_thresholds else None
            if self.lam == 0 or m.weight.grad is None:
                continue
            gamma = m.weight.detach()
            sub = torch.sign(gamma)
            if t is not None:
                sub = sub * (gamma.abs() < t).to(sub.dtype)
            m.weight.grad.add_(sub.to(m.weight.grad.dtype), alpha=self.lam)

    @torch.no_grad()
    def on_epoch_end(self, model: nn.Module) -> None:
        """Recompute every layer's threshold from its own current scales (dynamic thresholds only)."""
        if self.dynamic_thresholds:
            self.thresholds = {name: layer_threshold(m.weight.detach().abs(), self.threshold_ratio, self.floor)
                               for name, m in bn_layers(model)}

    @torch.no_grad()
    def layer_stats(self, model: nn.Module) -> list[dict[str, Any]]:
        """Per BatchNorm layer: channels, mean |gamma|, share below ``NEAR_ZERO``, threshold and share at or above it.

        ``threshold`` and ``above_threshold`` are ``None`` without dynamic thresholds (plain slimming uses
        one global threshold, chosen at pruning time). A layer without a threshold yet reports the one
        its current scales would give.
        """
        rows = []
        for name, m in bn_layers(model):
            a = m.weight.detach().abs().float()
            row: dict[str, Any] = {"layer": name, "channels": a.numel(), "mean_abs": float(a.mean()),
                                   "near_zero": float((a < NEAR_ZERO).float().mean()), "threshold": None,
                                   "above_threshold": None}
            if self.dynamic_thresholds:
                t = self.thresholds.get(name)
                if t is None:
                    t = layer_threshold(a, self.threshold_ratio, self.floor)
                row["threshold"] = t
                row["above_threshold"] = float((a >= t).float().mean())
            rows.append(row)
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {**self.settings(), "thresholds": dict(self.thresholds)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        theirs = {k: state.get(k) for k in self.settings()}
        if theirs != self.settings():
            raise AutopruneError(f"the saved sparsity state was written with other settings ({theirs}, "
                                 f"not {self.settings()})")
        self.thresholds = {str(k): float(v) for k, v in state.get("thresholds", {}).items()}


def summarize(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over all layers of ``layer_stats``: channels, mean |gamma|, share below ``NEAR_ZERO``, share under threshold."""
    channels = sum(r["channels"] for r in stats)
    out: dict[str, Any] = {
        "channels": channels,
        "mean_abs": sum(r["mean_abs"] * r["channels"] for r in stats) / max(channels, 1),
        "near_zero": sum(r["near_zero"] * r["channels"] for r in stats) / max(channels, 1),
    }
    if stats and all(r["above_threshold"] is not None for r in stats):
        out["below_threshold"] = sum((1 - r["above_threshold"]) * r["channels"] for r in stats) / max(channels, 1)
    return out


def summary_line(stats: list[dict[str, Any]]) -> str:
    s = summarize(stats)
    line = (f"scales  mean |gamma| {s['mean_abs']:.4f}  below {NEAR_ZERO:g}: {100 * s['near_zero']:.1f}% "
            f"of {s['channels']} channels")
    if "below_threshold" in s:
        line += f"  under their layer threshold: {100 * s['below_threshold']:.1f}%"
    return line


def format_layer_stats(stats: list[dict[str, Any]], before: list[dict[str, Any]] | None = None) -> str:
    """A text table of ``layer_stats`` (with the mean |gamma| of ``before`` beside it, when given)."""
    before_mean = {r["layer"]: r["mean_abs"] for r in before or []}
    width = max([len("layer"), *(len(r["layer"]) for r in stats)])
    head = f"{'layer':<{width}} {'channels':>8} " + (f"{'mean|g| before':>14} " if before else "") + \
        f"{'mean|g|':>8} {'<' + format(NEAR_ZERO, 'g'):>6} {'threshold':>9} {'above':>6}"
    lines = [head]
    for r in stats:
        line = f"{r['layer']:<{width}} {r['channels']:>8} "
        if before:
            b = before_mean.get(r["layer"])
            line += f"{b:>14.4f} " if b is not None else f"{'-':>14} "
        line += f"{r['mean_abs']:>8.4f} {100 * r['near_zero']:>5.1f}% "
        line += (f"{r['threshold']:>9.4f} {100 * r['above_threshold']:>5.1f}%" if r["threshold"] is not None
                 else f"{'-':>9} {'-':>6}")
        lines.append(line)
    return "\n".join(lines)


def _as_scales(x: nn.Module | Mapping[str, Any]) -> dict[str, np.ndarray]:
    if isinstance(x, nn.Module):
        return bn_scales(x)
    return {str(k): np.abs(np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64)).ravel()
            for k, v in x.items()}


def plot_scale_distributions(before: nn.Module | Mapping[str, Any], after: nn.Module | Mapping[str, Any],
                             path: str | os.PathLike, thresholds: Mapping[str, float] | None = None,
                             title: str | None = None) -> None:
    """Box plots of |gamma| per BatchNorm layer before and after training, written atomically as a PNG.

    ``before`` / ``after`` are models or ``{layer: scales}`` mappings (``bn_scales``). Top panel: one
    pair of boxes per layer on a symmetric-log axis (linear below ``NEAR_ZERO``), with each layer's
    threshold when ``thresholds`` is given; bottom panel: share of the layer's channels below ``NEAR_ZERO``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    b, a = _as_scales(before), _as_scales(after)
    names = list(a)
    if not names:
        raise AutopruneError("no BatchNorm scales to plot")
    n = len(names)
    x = np.arange(n)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(min(max(6.0, 0.3 * n + 2.5), 30.0), 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.2]})
    style = {"patch_artist": True, "widths": 0.36, "flierprops": {"markersize": 2}, "medianprops": {"color": "black"}}
    known = [i for i, name in enumerate(names) if name in b and b[name].size]
    if known:
        boxes = top.boxplot([b[names[i]] for i in known], positions=x[known] - 0.2, **style)
        for patch in boxes["boxes"]:
            patch.set_facecolor("0.8")
    boxes = top.boxplot([a[name] for name in names], positions=x + 0.2, **style)
    for patch in boxes["boxes"]:
        patch.set_facecolor("tab:blue")
    handles = [Patch(facecolor="0.8", edgecolor="black", label="before"),
               Patch(facecolor="tab:blue", edgecolor="black", label="after")]
    if thresholds:
        ts = [(i, thresholds[name]) for i, name in enumerate(names) if thresholds.get(name) is not None]
        if ts:
            top.hlines([t for _, t in ts], [i - 0.4 for i, _ in ts], [i + 0.4 for i, _ in ts], colors="tab:red", lw=1.5)
            handles.append(Patch(facecolor="tab:red", label="layer threshold"))
    top.axhline(NEAR_ZERO, color="0.5", ls="--", lw=0.8)
    top.set_yscale("symlog", linthresh=NEAR_ZERO)
    largest = max([float(s.max()) for s in [*a.values(), *b.values()] if s.size] + [NEAR_ZERO])
    top.set_ylim(0, largest * 1.6)  # always show the near-zero (linear) band
    top.set_ylabel("|gamma| (BatchNorm scale)")
    top.grid(axis="y", alpha=0.3)
    top.legend(handles=handles, fontsize=8, ncol=len(handles), loc="lower center", bbox_to_anchor=(0.5, 1.0),
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    share = lambda s: 100.0 * float(np.mean(s < NEAR_ZERO)) if s.size else 0.0  # noqa: E731
    bottom.bar(x - 0.2, [share(b[name]) if name in b else 0.0 for name in names], 0.36, color="0.7", label="before")
    bottom.bar(x + 0.2, [share(a[name]) for name in names], 0.36, color="tab:blue", label="after")
    bottom.set_ylabel(f"% below {NEAR_ZERO:g}")
    bottom.set_ylim(0, 100)
    bottom.grid(axis="y", alpha=0.3)
    bottom.set_xticks(x)
    bottom.set_xticklabels(names, rotation=90, fontsize=max(4, 8 - n // 20))
    save_figure(fig, path, dpi=110)
