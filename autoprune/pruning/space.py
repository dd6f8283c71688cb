"""The pruning space of a model: its coupled channel groups, closed-form FLOPs, and physical pruning.

Built once per base model on torch-pruning's ``DependencyGraph`` (``autoprune.pruning.tracing``). Each
group's pruning is recorded as a *plan* -- for every coupled layer, the pruning function and the channel
indices each root channel maps to -- so ``apply`` replays the plan on a copy of the model without
re-tracing it. Groups that cannot be pruned safely (grouped convolutions, channels that pass through a
channel shuffle or a split, ...) are listed in ``excluded`` with the reason.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from autoprune.errors import AutopruneError
from autoprune.pruning.flops import LayerRecord, count_flops, trace_layers
from autoprune.pruning.groups import ChannelGroup, ExcludedGroup, PruneOp
from autoprune.pruning.importance import create_criterion, list_criteria, needs_data
from autoprune.pruning.tracing import OpaqueReshape, PruningCall, build_dependency_graph

__all__ = ["ChannelGroup", "ExcludedGroup", "PruneOp", "PruningSpace", "check_target"]


def _plain(idxs: Iterable) -> np.ndarray:
    return np.asarray([int(getattr(i, "idx", i)) for i in idxs], dtype=np.int64)


class PruningSpace:
    """The channel groups of ``model`` and what pruning each of them costs and saves.

    :param model: the base model; it is copied and never modified.
    :param example_inputs: a batch shaped like the model's inputs (e.g. ``torch.randn(1, 3, 32, 32)``).
    :param ignored_layers: names of extra layers whose output channels must be kept. The last
        conv/linear layer in forward order (the classifier) is always kept.
    :param validate: prune every group once at construction and check the forward pass and FLOPs;
        groups that fail are excluded (see ``excluded``) instead of pruning silently wrong.
    :param round_to: keep channel counts that are multiples of this (or the whole group), which
        vectorised CPU/GPU kernels run faster; 1 = any count.

    Rounding: a keep ratio ``r`` keeps ``round(r * C)`` channels of a ``C``-channel group, at least 1;
    with ``round_to=m`` the nearest of m, 2m, ..., C (ties to the larger).
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, ignored_layers: Sequence[str] = (),
                 validate: bool = True, round_to: int = 1) -> None:
        if int(round_to) < 1:
            raise AutopruneError(f"round_to must be >= 1, got {round_to}")
        self.round_to = int(round_to)
        self.model = copy.deepcopy(model).eval()
        self.example_inputs = example_inputs[:1].detach().clone()
        records, executed, _ = trace_layers(self.model, self.example_inputs)
        if not records:
            raise AutopruneError("the model has no conv or linear layer to prune")
        self.layers: list[LayerRecord] = records
        self._layer_index = {r.name: i for i, r in enumerate(records)}
        modules = dict(self.model.named_modules())
        unknown = [n for n in ignored_layers if n not in modules]
        if unknown:
            raise AutopruneError(f"ignored layer(s) not in the model: {', '.join(unknown)}")
        self.output_layer = records[-1].name
        ignored = [modules[n] for n in ignored_layers] + [modules[self.output_layer]]

        try:
            self.graph = build_dependency_graph(self.model, self.example_inputs)
        except Exception as exc:  # noqa: BLE001 -- torch-pruning fails on some graphs; say so in one line
            raise AutopruneError(f"cannot trace the channel dependencies of this model ({_first_line(exc)}), "
                                 "so none of its channels can be pruned safely") from None
        self.excluded: list[ExcludedGroup] = []
        candidates = []
        for tp_group in self.graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)):
            group = self._make_group(tp_group)
            if group is not None:
                candidates.append(group)
        candidates.sort(key=lambda g: self._layer_index.get(g.root, len(records)))
        self.groups: list[ChannelGroup] = []
        self._finalize(candidates)
        if validate:
            self._validate(candidates)
        if not self.groups:
            reasons = "; ".join(f"{e.root}: {e.reason}" for e in self.excluded) or "no conv/linear layer besides the classifier"
            raise AutopruneError(f"the model has no prunable channel group ({reasons})")
        self._dense_flops = int(self._flops_batch(np.zeros((self.num_groups, 1)))[0])
        self._scores: dict[str, list[np.ndarray]] = {}

    # ------------------------------------------------------------------ construction
    def _make_group(self, tp_group: Any) -> ChannelGroup | None:
        root_module = tp_group[0].dep.target.module
        root = self.graph._module2name.get(root_module)
        channels = len(tp_group[0].idxs)
        ops: list[PruneOp] = []
        opaque = None
        for item in tp_group:
            dep = item.dep
            target = dep.target.module
            if isinstance(target, OpaqueReshape):
                opaque = opaque or target
                continue
            is_param = isinstance(target, nn.Parameter)
            name = self.graph._param_to_name.get(target) if is_param else self.graph._module2name.get(target)
            if name is None:
                continue  # a torch-pruning bookkeeping op (concat, add, ...): nothing to prune physically
            idxs, root_idxs = _plain(item.idxs), np.asarray(item.root_idxs, dtype=np.int64)
            ops.append(PruneOp(name, PruningCall(dep), idxs, root_idxs, self.graph.is_out_channel_pruning_fn(dep.handler), is_param))
        reason = None
        if channels < 2:
            reason = "a single channel: nothing to prune"
        elif opaque is not None:
            reason = (f"its channels pass through a reshape that reorders channels ({opaque.describe()}; "
                      "e.g. a channel shuffle), which cannot be followed channel by channel")
        for op in ops:
            if reason is not None:
                break
            record = self._record(op.module_name)
            counts = np.bincount(op.root_idxs, minlength=channels) if len(op.root_idxs) else np.zeros(channels)
            if record is not None and record.grouped:
                reason = f"grouped convolution {op.module_name} (groups={record.groups}): removing channels would reassign them to other groups"
            elif counts.min() != counts.max():
                reason = (f"{op.module_name} sees only some of the group's channels (a split or channel shuffle): "
                          "the kept counts would depend on which channels are chosen")
        if reason is not None:
            self.excluded.append(ExcludedGroup(root, channels, reason))
            return None
        record = self._record(root)
        assert record is not None
        kind = "linear" if isinstance(root_module, nn.Linear) else ("depthwise" if record.depthwise else "conv")
        return ChannelGroup(0, root, channels, sorted({op.module_name for op in ops}), kind, record.in_channels,
                            record.out_channels, record.kernel, record.stride, record.in_size, ops=ops,
                            tp_group=tp_group)

    def _record(self, name: str) -> LayerRecord | None:
        i = self._layer_index.get(name)
        return None if i is None else self.layers[i]

    def _finalize(self, candidates: list[ChannelGroup]) -> None:
        """Index the kept groups and build the matrices of the closed-form FLOPs count."""
        self.groups = list(candidates)
        n_layers, n_groups = len(self.layers), len(self.groups)
        self._out_mult = np.zeros((n_layers, n_groups))
        self._in_mult = np.zeros((n_layers, n_groups))
        for gi, group in enumerate(self.groups):
            group.index = gi
            for op in group.ops:
                li = self._layer_index.get(op.module_name)
                if li is None:
                    continue
                mult = len(op.idxs) / group.channels  # channels of this layer per root channel (HW after a flatten)
                record = self.layers[li]
                if op.is_out or record.depthwise:
                    self._out_mult[li, gi] = mult
                else:
                    self._in_mult[li, gi] = mult
        self._out0 = np.array([r.out_channels for r in self.layers], dtype=np.float64)
        self._in0 = np.array([r.in_channels for r in self.layers], dtype=np.float64)
        self._coef = np.array([r.kernel * r.positions for r in self.layers], dtype=np.float64)
        self._groups_div = np.array([r.groups for r in self.layers], dtype=np.float64)
        self._depthwise = np.array([r.depthwise for r in self.layers])
        self.channels = np.array([g.channels for g in self.groups], dtype=np.int64)
        for gi, group in enumerate(self.groups):
            touched = (self._out_mult[:, gi] > 0) | (self._in_mult[:, gi] > 0)
            group.flops = int(sum(self.layers[i].macs for i in np.flatnonzero(touched)))
            group.params = int(sum(self.layers[i].params for i in np.flatnonzero(touched)))

    def _validate(self, candidates: list[ChannelGroup]) -> None:
        """Prune every group at once (then one by one if that fails) and check forward + FLOPs."""
        if self._check(np.full(self.num_groups, 0.5)) is None:
            return
        bad = []
        for gi in range(self.num_groups):
            ratios = np.ones(self.num_groups)
            ratios[gi] = 0.5
            problem = self._check(ratios)
            if problem is not None:
                bad.append(gi)
                g = self.groups[gi]
                self.excluded.append(ExcludedGroup(g.root, g.channels, problem))
        self._finalize([c for i, c in enumerate(candidates) if i not in bad])
        if self.groups and self._check(np.full(self.num_groups, 0.5)) is not None:
            raise AutopruneError("this model's channel groups cannot be pruned together safely; "
                                 f"excluded so far: {', '.join(e.root for e in self.excluded)}")

    def _check(self, ratios: np.ndarray) -> str | None:
        try:
            pruned = self._prune(self.keep_counts(ratios), [np.arange(c, dtype=np.float64) for c in self.channels])
            actual = count_flops(pruned, self.example_inputs)
        except Exception as exc:  # noqa: BLE001 -- any failure means "not safely prunable"
            return f"pruning it breaks the forward pass ({_first_line(exc)})"
        expected = self.flops(ratios)
        if actual != expected:
            return f"FLOPs after pruning ({actual}) differ from the closed form ({expected}): an unsupported layer"
        return None

    # ------------------------------------------------------------------ public API
    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def dense_flops(self) -> int:
        return self._dense_flops

    def keep_counts(self, strategy: Sequence[float] | np.ndarray) -> np.ndarray:
        """Channels kept per group for a strategy of keep ratios: ``round(r * C)``, clipped to [1, C]
        and snapped to the allowed counts when ``round_to > 1``."""
        ratios = np.asarray(strategy, dtype=np.float64)
        if ratios.shape != (self.num_groups,):
            raise AutopruneError(f"a strategy for this model has {self.num_groups} keep ratios (one per group), got shape {ratios.shape}")
        if not np.all(np.isfinite(ratios)) or ratios.min() < 0 or ratios.max() > 1:
            raise AutopruneError("keep ratios must lie in [0, 1]")
        counts = np.clip(np.floor(ratios * self.channels + 0.5), 1, self.channels).astype(np.int64)
        return self.snap(counts)

    def allowed_counts(self, group: int) -> np.ndarray:
        """The channel counts group ``group`` may keep (1..C, or multiples of ``round_to`` and C)."""
        c = int(self.channels[group])
        if self.round_to == 1:
            return np.arange(1, c + 1)
        return np.unique(np.append(np.arange(self.round_to, c + 1, self.round_to), c))

    def snap(self, counts: np.ndarray) -> np.ndarray:
        """Nearest allowed count per group (ties to the larger)."""
        if self.round_to == 1:
            return np.asarray(counts, dtype=np.int64)
        out = np.empty(len(counts), dtype=np.int64)
        for g, n in enumerate(counts):
            allowed = self.allowed_counts(g)
            out[g] = allowed[np.argmin(np.abs(allowed - n) - 1e-9 * allowed)]
        return out

    def flops(self, strategy: Sequence[float] | np.ndarray | None = None) -> int:
        """MACs per image of the dense model (``None``) or of the model pruned with ``strategy`` (closed form)."""
        if strategy is None:
            return self.dense_flops
        removed = (self.channels - self.keep_counts(strategy)).astype(np.float64)
        return int(self._flops_batch(removed[:, None])[0])

    def flops_of_counts(self, kept: np.ndarray) -> np.ndarray:
        """Vectorised closed form: ``kept`` is (num_groups, K) channel counts; returns K MAC counts."""
        return self._flops_batch(self.channels[:, None] - kept)

    def _flops_batch(self, removed: np.ndarray) -> np.ndarray:
        out = self._out0[:, None] - self._out_mult @ removed
        inp = self._in0[:, None] - self._in_mult @ removed
        per_group_in = np.where(self._depthwise[:, None], 1.0, inp / self._groups_div[:, None])
        return np.rint((self._coef[:, None] * out * per_group_in).sum(0)).astype(np.int64)

    def flops_ratio(self, strategy: Sequence[float] | np.ndarray) -> float:
        return self.flops(strategy) / self.dense_flops

    def min_flops_ratio(self, min_keep: float = 0.0) -> float:
        """Smallest FLOPs ratio reachable with every group at ``min_keep`` (at least one channel)."""
        return self.flops_ratio(np.full(self.num_groups, min_keep))

    def uniform(self, target: float, min_keep: float = 0.0) -> np.ndarray:
        """The largest single keep ratio for all groups whose FLOPs ratio is at most ``target``."""
        check_target(target)
        if self.min_flops_ratio(min_keep) > target:
            raise AutopruneError(f"target {target:g} is below the smallest FLOPs ratio this model reaches "
                                 f"({self.min_flops_ratio(min_keep):.4f}) with keep ratio {min_keep:g}")
        ratio = self.largest_within(lambda a: np.full(self.num_groups, min_keep + a * (1.0 - min_keep)), target)
        return np.full(self.num_groups, min_keep + ratio * (1.0 - min_keep))

    def global_ranking(self, target: float, scores: Sequence[np.ndarray], min_keep: float = 0.0) -> np.ndarray:
        """Keep ratios from one ranking of every channel of the model: each group's ``scores`` divided
        by their mean (so groups are comparable), then the least important channels removed, wherever
        they are, until the FLOPs ratio is at most ``target``; no group drops below ``min_keep``.
        """
        check_target(target)
        if len(scores) != self.num_groups:
            raise AutopruneError(f"need importance scores for {self.num_groups} groups, got {len(scores)}")
        normalised = np.concatenate([np.asarray(s, float) / (np.abs(s).mean() + 1e-12) for s in scores])
        owner = np.concatenate([np.full(len(s), g) for g, s in enumerate(scores)])
        order = owner[np.argsort(normalised, kind="stable")]  # group of each channel, least important first
        floor = self.keep_counts(np.full(self.num_groups, float(min_keep)))  # at least one channel
        limit = target * self.dense_flops

        def counts_after(k: int) -> np.ndarray:
            removed = np.bincount(order[:k], minlength=self.num_groups)
            return self.snap(np.maximum(self.channels - removed, floor))

        lo, hi = 0, len(order)  # the fewest removals that meet the target
        while lo < hi:
            mid = (lo + hi) // 2
            if self.flops_of_counts(counts_after(mid)[:, None])[0] <= limit:
                hi = mid
            else:
                lo = mid + 1
        return counts_after(lo) / self.channels

    def largest_within(self, make: Callable[[float], np.ndarray], target: float, steps: int = 50) -> float:
        """The largest ``a`` in [0, 1] with ``flops_ratio(make(a)) <= target``, for ``make`` whose FLOPs
        grow with ``a`` (bisection; 0 when even ``make(0)`` is over)."""
        if self.flops_ratio(make(1.0)) <= target:
            return 1.0
        lo, hi = 0.0, 1.0
        for _ in range(steps):
            mid = (lo + hi) / 2
            if self.flops_ratio(make(mid)) <= target:
                lo = mid
            else:
                hi = mid
        return lo

    def fill(self, strategy: Sequence[float] | np.ndarray, target: float) -> np.ndarray:
        """Spend the budget a strategy leaves unused: shrink every group's pruned fraction by one common
        factor, as far as the FLOPs ratio stays at most ``target``; then hand single channel steps to
        the most-pruned groups while they still fit (what a common factor cannot do with round_to > 1).

        The result keeps at least the channels ``strategy`` keeps in every group, preserves which groups
        are pruned harder than others, and is returned as exact keep ratios (kept / channels). A
        strategy already over ``target`` is returned unchanged (as exact ratios).
        """
        check_target(target)
        kept = self.keep_counts(strategy)
        ratios = kept / self.channels
        if self.flops_of_counts(kept[:, None])[0] > target * self.dense_flops:
            return ratios
        pruned = 1.0 - ratios
        # a = the fraction of every group's pruning given back: 0 = the strategy as given, 1 = dense
        a = self.largest_within(lambda a: 1.0 - (1.0 - a) * pruned, target, steps=40)
        filled = np.maximum(self.keep_counts(1.0 - (1.0 - a) * pruned), kept)
        # A common factor moves in coarse steps with round_to > 1 (a 16-channel group keeps 8 or 16):
        # hand single steps to the most-pruned groups while they fit.
        limit = target * self.dense_flops
        while True:
            steps = np.array([self._next_count(g, n) for g, n in enumerate(filled)])
            trials = np.tile(filled, (self.num_groups, 1)).T
            np.fill_diagonal(trials, steps)
            fits = (steps > filled) & (self.flops_of_counts(trials) <= limit)
            if not fits.any():
                return filled / self.channels
            order = np.argsort(filled / self.channels, kind="stable")
            g = order[fits[order]][0]
            filled[g] = steps[g]

    def _next_count(self, group: int, count: int) -> int:
        """The next allowed count above ``count`` (``count`` itself when the group is whole)."""
        allowed = self.allowed_counts(group)
        above = allowed[allowed > count]
        return int(above[0]) if len(above) else int(count)

    def importance(self, criterion: str = "l1", data: Iterable | None = None, refresh: bool = False) -> list[np.ndarray]:
        """Per-group channel scores (higher = keep), computed once per criterion and cached.

        ``data`` (a few training batches of (images, labels)) is needed by the criteria whose
        ``needs_data`` is true (``autoprune.pruning.importance.needs_data(name)``), and unused by the others.
        """
        if refresh or criterion not in self._scores:
            if data is None and needs_data(criterion):
                free = ", ".join(n for n in list_criteria() if not needs_data(n))
                raise AutopruneError(f"importance criterion {criterion!r} needs data: pass a few training batches "
                                     f"(data=...), or use a criterion that needs none ({free})")
            self._scores[criterion] = create_criterion(criterion).scores(self, data)
        return self._scores[criterion]

    def set_importance(self, criterion: str, scores: Sequence[np.ndarray]) -> None:
        """Use ``scores`` (computed elsewhere, e.g. stored with a policy) as this space's ``criterion`` scores."""
        if len(scores) != self.num_groups or any(len(s) != c for s, c in zip(scores, self.channels)):
            raise AutopruneError(f"importance scores for {len(scores)} groups do not fit this model's "
                                 f"{self.num_groups} groups of {self.channels.tolist()} channels")
        self._scores[criterion] = [np.asarray(s, dtype=np.float64) for s in scores]

    def apply(self, strategy: Sequence[float] | np.ndarray, criterion: str = "l1", data: Iterable | None = None,
              reconstruct: Iterable[torch.Tensor] | None = None) -> nn.Module:
        """A new, physically smaller copy of the model, pruned with ``strategy`` (the base is untouched).

        Within each group the channels with the lowest ``criterion`` scores are removed. With
        ``reconstruct`` (calibration image batches, a few hundred images), the layers after the removed
        channels are refitted by least squares to reproduce the base model's outputs
        (``autoprune.pruning.reconstruct``); the report is on ``model.autoprune_reconstruction``.
        """
        kept = self.keep_counts(strategy)
        scores = self.importance(criterion, data)
        pruned = self._prune(kept, scores)
        if reconstruct is not None:
            from autoprune.pruning.reconstruct import reconstruct as refit

            removed = {key: idxs for key, (_, idxs) in self._removals(kept, scores).items()}
            pruned.autoprune_reconstruction = refit(self.model, pruned, reconstruct, removed)
        return pruned

    def removed_channels(self, strategy: Sequence[float] | np.ndarray, criterion: str = "l1",
                         data: Iterable | None = None) -> dict[tuple[str, bool], list[int]]:
        """What ``apply`` removes: ``{(layer name, output side?): channel indices of the dense layer}``."""
        return {key: idxs for key, (_, idxs) in self._removals(self.keep_counts(strategy), self.importance(criterion, data)).items()}

    def _removals(self, kept: np.ndarray, scores: list[np.ndarray]) -> dict[tuple[str, bool], tuple[PruneOp, list[int]]]:
        # Indices of every op are in the *dense* layout, so all removals of one layer (e.g. the
        # input of a conv after a concat, fed by several groups) are merged and applied in one call.
        removals: dict[tuple[str, bool], tuple[PruneOp, list[int]]] = {}
        for group, n_keep, score in zip(self.groups, kept, scores):
            n_remove = group.channels - int(n_keep)
            if n_remove <= 0:
                continue
            remove = np.zeros(group.channels, dtype=bool)
            remove[np.argsort(score, kind="stable")[:n_remove]] = True
            for op in group.ops:
                entry = removals.setdefault((op.module_name, op.is_out), (op, []))
                entry[1].extend(op.idxs[remove[op.root_idxs]].tolist())
        return {key: (op, sorted(set(idxs))) for key, (op, idxs) in removals.items()}

    def _prune(self, kept: np.ndarray, scores: list[np.ndarray]) -> nn.Module:
        model = copy.deepcopy(self.model)
        modules = dict(model.named_modules())
        params = dict(model.named_parameters())
        for (name, _), (op, idxs) in self._removals(kept, scores).items():
            if op.is_parameter:
                owner_name, _, leaf = name.rpartition(".")
                setattr(modules[owner_name], leaf, op.handler(params[name], idxs))
            else:
                op.handler(modules[name], idxs)
        return model

    def describe(self) -> str:
        """A table of the groups (and the excluded ones, with the reason)."""
        lines = [f"{'#':>3}  {'root layer':<32} {'kind':<9} {'channels':>8} {'FLOPs share':>11}  layers"]
        for g in self.groups:
            lines.append(f"{g.index:>3}  {g.root:<32} {g.kind:<9} {g.channels:>8} {g.flops / self.dense_flops:>11.3f}  {len(g.layers)}")
        for e in self.excluded:
            lines.append(f"  -  {e.root:<32} excluded: {e.reason}")
        return "\n".join(lines)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{exc.__class__.__name__}: {lines[0][:140]}" if lines else exc.__class__.__name__


def check_target(target: float) -> float:
    if not isinstance(target, (int, float, np.floating)) or not 0 < float(target) <= 1:
        raise AutopruneError(f"target must be a FLOPs ratio in (0, 1], got {target!r}")
    return float(target)
