"""Baselines that allocate keep ratios from channel scores and thresholds, without the proxy.

Slimming, elasticity and gradient-threshold spend 0 proxy evaluations (the data-dependent scores --
Taylor, gradient -- take a few backward passes over ``importance_data`` once per base model, cached on
the space like the task's own criterion); ``tp-global`` runs Torch-Pruning's own global pruning.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn as nn

from autoprune.agents.searcher import SEARCHERS, Searcher, SearchResult
from autoprune.errors import AutopruneError
from autoprune.pruning import PruningSpace
from autoprune.sparsity import DEFAULT_FLOOR, DEFAULT_THRESHOLD_RATIO, layer_threshold
from autoprune.task import PruningTask, importance_data


@SEARCHERS.register("tp-global")
class TorchPruningGlobal(Searcher):
    """Torch-Pruning's global pruning as its users run it (Fang et al., "DepGraph", CVPR 2023; see
    ``autoprune.pruning.tp_global``): the model pruned by torch-pruning itself, not re-implemented. Its
    pruning ratio is bisected so that the FLOPs ratio is at most the target; ``min_keep`` is not
    enforced (torch-pruning's global mode has no per-layer floor) and ``reconstruct`` is not applied.
    The proxy scores torch-pruning's model. 1 proxy evaluation."""

    summary = "Torch-Pruning's own global pruning (MagnitudeImportance), bisected to the target"

    def search(self, task: PruningTask, target: float, episodes: int = 100, seed: int = 0) -> SearchResult:
        from autoprune.pruning.tp_global import torch_pruning_global_to_target

        t0 = time.perf_counter()
        strategy, model = torch_pruning_global_to_target(task.space, target)
        proxy = task.proxy.score(copy.deepcopy(model))
        return SearchResult(strategy, proxy, 1, time.perf_counter() - t0, model=model)




def _bn_layers(space: PruningSpace) -> list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per group, one ``(|gamma| of the whole layer, the layer's channels in the group, their root channels)``
    for every affine BatchNorm layer the group prunes (none for a group without BatchNorm)."""
    modules = dict(space.model.named_modules())
    out = []
    for group in space.groups:
        layers = []
        for op in group.ops:
            module = None if op.is_parameter else modules.get(op.module_name)
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                layers.append((module.weight.detach().abs().float().cpu().numpy(), op.idxs, op.root_idxs))
        out.append(layers)
    return out


def bn_scales(space: PruningSpace) -> list[np.ndarray | None]:
    """Raw |gamma| per channel of every group (the mean over the group's BatchNorm layers when several are
    coupled, as in torch-pruning's ``BNScaleImportance`` before its normalisation); None for a group
    without BatchNorm."""
    out: list[np.ndarray | None] = []
    for group, layers in zip(space.groups, _bn_layers(space)):
        if not layers:
            out.append(None)
            continue
        total, count = np.zeros(group.channels), np.zeros(group.channels)
        for scales, idxs, root in layers:
            np.add.at(total, root, scales[idxs].astype(np.float64))
            np.add.at(count, root, 1)
        out.append(total / np.maximum(count, 1))
    return out


def dynamic_floors(space: PruningSpace, fallback: list[np.ndarray], ratio: float = DEFAULT_THRESHOLD_RATIO,
                   floor: float = DEFAULT_FLOOR) -> np.ndarray:
    """Channels per group that ``autoprune.sparsity``'s dynamic-threshold rule protects: a root channel is
    protected when its |gamma| is at or above its BatchNorm layer's threshold ``layer_threshold`` (computed
    on the whole layer) in any of the group's BatchNorm layers. A group without BatchNorm applies the same
    rule to its ``fallback`` scores. At least ``ceil(floor * C)`` channels per group, by the rule."""
    counts = []
    for group, layers, scores in zip(space.groups, _bn_layers(space), fallback):
        protected = np.zeros(group.channels, dtype=bool)
        if layers:
            for scales, idxs, root in layers:  # float32 on both sides, as the sparse training compares them
                t = np.float32(layer_threshold(torch.from_numpy(scales), ratio, floor))
                protected[root[scales[idxs] >= t]] = True
        else:
            s = np.abs(np.asarray(scores, dtype=np.float32))
            protected = s >= np.float32(layer_threshold(torch.from_numpy(s), ratio, floor))
        counts.append(int(protected.sum()))
    return np.array(counts, dtype=np.int64)


def knee_point(x: np.ndarray, y: np.ndarray) -> tuple[int, float]:
    """The knee of the curve ``(x_i, y_i)``: the point farthest from the chord between its first and last
    points (maximum distance from the chord, the discrete form of maximum curvature), with both axes
    scaled to [0, 1]. Returns its index and that distance (0 for a straight or degenerate curve)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y) or len(x) < 3:
        return 0, 0.0
    span_x, span_y = np.ptp(x), np.ptp(y)
    if span_x <= 0 or span_y <= 0:
        return 0, 0.0
    px, py = (x - x.min()) / span_x, (y - y.min()) / span_y
    dx, dy = px[-1] - px[0], py[-1] - py[0]
    length = np.hypot(dx, dy)
    if length <= 0:
        return 0, 0.0
    distance = np.abs(dx * (py - py[0]) - dy * (px - px[0])) / length
    i = int(np.argmax(distance))
    return i, float(distance[i])


def knee_keep_ratio(scores: np.ndarray, min_distance: float = 0.05, outliers: float = 0.05) -> float:
    """A group's preferred keep ratio: where the curve "fraction of its channels with score >= t" against
    the threshold ``t`` bends most (``knee_point``).

    The curve is a staircase down from (lowest score, 1); its corners are the points
    ``(s_(i), (C - i) / C)`` and ``(s_(i), (C - i - 1) / C)`` over the sorted scores ``s_(0) <= ...``.
    The threshold axis runs to a robust upper end, not to the largest score: the top
    ``m = ceil(outliers * C)`` channels (5%, at least one) are set aside as possible outliers, and the
    curve stops at the largest of the other scores, ``(s_(C-m-1), m / C)``. The fraction still counts
    every channel, so the set-aside ones are always kept above the knee. The knee's fraction is the
    ratio: two clusters of scores give the size of the upper one (when it is larger than ``m``); up to
    ``m`` outlier scores far above the rest do not stretch the axis (which would put the knee at 1/C):
    the knee falls where the group without them has its knee, with those channels added to it. A curve
    whose knee stands out from the chord by less than ``min_distance`` beyond the staircase's own steps
    (``1 / ((C - m) sqrt 2)``, all that evenly spaced scores show) has no knee: the chord's midpoint,
    0.5; so has a group whose scores below the set-aside ones are all equal.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))
    c = len(s)
    if c < 2 or s[-1] <= s[0]:
        return 0.5
    # Set aside the top m by count, not by distance: heavy-tailed (gradient, Taylor) scores have no
    # reliable spread to measure "far" against, while a count bounds how much of the group can be taken
    # for outliers. The curve of the rest, once knee_point scales its fraction axis from [m/C, 1] to
    # [0, 1], is exactly the curve of the group without those m channels, so a real upper cluster larger
    # than m still shows its knee. (A log axis would bend evenly spread scores and cannot take zeros; a
    # rank axis makes every curve straight.)
    m = min(int(np.ceil(outliers * c - 1e-9)), c - 1)
    n = c - m  # the channels on the curve
    s = s[:n]
    if n < 2 or s[-1] <= s[0]:
        return 0.5
    ranks = np.arange(n)
    x = np.concatenate([s, s])
    y = np.concatenate([(c - ranks) / c, (c - ranks - 1) / c])
    order = np.lexsort((-y, x))  # along the staircase: threshold up, fraction down
    x, y = x[order], y[order]
    i, distance = knee_point(x, y)
    if distance <= min_distance + 1.0 / (n * np.sqrt(2.0)):
        return 0.5
    return max(float(y[i]), 1.0 / c)


def _min_keep_counts(space: PruningSpace, min_keep: float, target: float) -> np.ndarray:
    """The fewest channels per group with a keep ratio of at least ``min_keep`` (at least 1), as allowed
    counts; where those are over ``target``, ``min_keep`` rounded as ``keep_counts`` rounds it (the
    floor ``PruningTask`` checks targets against); an error where even that is over."""
    counts = _snap_up(space, np.clip(np.ceil(min_keep * space.channels - 1e-9), 1, space.channels).astype(np.int64))
    if _over(space, counts, target):
        counts = space.keep_counts(np.full(space.num_groups, float(min_keep)))
        if _over(space, counts, target):
            raise AutopruneError(f"target {target:g} is below the smallest FLOPs ratio this model reaches "
                                 f"({space.min_flops_ratio(min_keep):.4f}) with keep ratio {min_keep:g}")
    return counts


def _snap_up(space: PruningSpace, counts: np.ndarray) -> np.ndarray:
    """The smallest allowed count (``round_to``) at or above each count."""
    out = np.empty(space.num_groups, dtype=np.int64)
    for g, n in enumerate(counts):
        allowed = space.allowed_counts(g)
        out[g] = allowed[np.searchsorted(allowed, min(int(n), int(space.channels[g])))]
    return out


def _over(space: PruningSpace, counts: np.ndarray, target: float) -> bool:
    return bool(space.flops_of_counts(np.asarray(counts)[:, None])[0] > target * space.dense_flops)


def _removal_order(scores: list[np.ndarray], tiebreak: list[np.ndarray] | None = None) -> np.ndarray:
    """The group of every channel of the model, least important first (ties by ``tiebreak``, then position)."""
    flat = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores])
    owner = np.concatenate([np.full(len(s), g) for g, s in enumerate(scores)])
    second = np.zeros_like(flat) if tiebreak is None else np.concatenate([np.asarray(t, float) for t in tiebreak])
    return owner[np.lexsort((np.arange(len(flat)), second, flat))]


def _remove_in_order(space: PruningSpace, order: np.ndarray, floors: np.ndarray, target: float) -> np.ndarray:
    """Keep ratios (exact: kept / channels) after removing the first channels of ``order`` (the group of each
    channel, least important first) until the FLOPs ratio is at most ``target``; no group goes below
    ``floors`` (allowed counts). The fewest removals are found by ``PruningSpace.largest_within`` over the
    share of the ranking kept: a threshold on the scores, between the last channel removed and the next."""
    n = len(order)

    def make(a: float) -> np.ndarray:
        removed = np.bincount(order[: n - int(np.floor(a * n + 0.5))], minlength=space.num_groups)
        return space.snap(np.maximum(space.channels - removed, floors)) / space.channels

    return make(space.largest_within(make, target))


def _spend_leftover(task: PruningTask, strategy: np.ndarray, target: float, floors: np.ndarray) -> np.ndarray:
    """The method's own allocation where it is within the settings' tolerance under ``target``; otherwise
    (whole channels are coarse steps: ``round_to``, small groups with a large FLOPs share) the budget is
    filled as the environment fills it (``PruningSpace.fill``, only where the settings fill budgets), and
    where no group can grow without going over, single channel steps are moved from one group to another
    (none below ``floors``): each move the one that ends nearest under the target, while any brings the
    strategy closer. A strategy so repaired is returned as exact ratios (kept / channels)."""
    space = task.space
    low = (target - task.settings.tolerance) * space.dense_flops
    if not task.settings.fill_budget or space.flops(strategy) >= low:
        return strategy
    strategy = space.fill(strategy, target)
    kept = space.keep_counts(strategy)
    current = space.flops_of_counts(kept[:, None])[0]
    if current >= low:
        return strategy
    allowed = [space.allowed_counts(g) for g in range(space.num_groups)]
    for _ in range(4 * space.num_groups):
        ups = [a[a > n] for a, n in zip(allowed, kept)]
        downs = [a[(a < n) & (a >= f)] for a, n, f in zip(allowed, kept, floors)]
        pairs = [(g, r) for g in range(space.num_groups) for r in range(space.num_groups)
                 if g != r and len(ups[g]) and len(downs[r])]
        if not pairs:
            break
        trials = np.tile(kept[:, None], (1, len(pairs)))
        for j, (g, r) in enumerate(pairs):
            trials[g, j], trials[r, j] = ups[g][0], downs[r][-1]
        flops = space.flops_of_counts(trials)
        flops = np.where(flops <= target * space.dense_flops, flops, -1)
        best = int(np.argmax(flops))
        if flops[best] <= current:
            break
        kept, current = trials[:, best].copy(), flops[best]
        if current >= low:
            break
    return kept / space.channels


def _scores(task: PruningTask, criterion: str) -> list[np.ndarray]:
    """The task's importance scores under ``criterion`` (its own when they are the task's criterion)."""
    if task.settings.criterion == criterion:
        return task.scores
    return task.space.importance(criterion, importance_data(task.splits))


@SEARCHERS.register("slimming")
class Slimming(Searcher):
    """Network Slimming (Liu et al., "Learning Efficient Convolutional Networks through Network Slimming",
    ICCV 2017): one *global* threshold on the BatchNorm scales |gamma|, channels below it removed.

    This library's form: every channel of every group is scored by its raw |gamma| (the mean over the
    group's BatchNorm layers when several are coupled, e.g. through a residual add; no per-group
    normalisation, so a layer whose scales are all small loses most of its channels, as in the paper).
    All channels are ranked on one scale (ties broken by the task's criterion, normalised per group)
    and removed from the smallest up until the FLOPs ratio is at most the target: the threshold is
    found by bisection (``PruningSpace.largest_within``) and lies between the largest |gamma| removed
    and the smallest kept. Each group keeps at least ``min_keep`` of its channels (then it stops losing
    channels and the threshold moves on to the other groups). Where whole channels are too coarse a step
    to land within the tolerance under the target, the strategy is repaired (``_spend_leftover``: the
    environment's budget fill, then single channels moved between groups, none below ``min_keep``).

    Groups without BatchNorm fall back to the ``bn_scale`` criterion's own fallback, the L1 weight
    magnitude, divided by its group mean and multiplied by the mean |gamma| of all BatchNorm channels of
    the model: such a group competes as a layer of typical scales, its channels ordered by magnitude.
    (A model without any BatchNorm thus gets the ``global`` ranking of L1 magnitudes.)

    Within each group the channels removed are those with the smallest |gamma| (the ``bn_scale``
    criterion), whatever the task's criterion: when that is not ``bn_scale``, the result carries its own
    pruned model (``SearchResult.model``), scored by the task's proxy. 0 proxy evaluations.
    """

    summary = "network slimming (Liu et al. 2017): one global threshold on BatchNorm scales"

    def search(self, task: PruningTask, target: float, episodes: int = 100, seed: int = 0) -> SearchResult:
        if task.settings.criterion == "bn_scale":  # the task already removes the smallest |gamma| of each group
            return super().search(task, target, episodes, seed)
        t0 = time.perf_counter()
        strategy, spent = self._search(task, target, episodes, np.random.default_rng(seed))
        own = task.derive(criterion="bn_scale")  # the task's rules and space; each group's smallest |gamma| go
        return SearchResult(strategy, own.score(strategy), spent, time.perf_counter() - t0, own.apply(strategy))

    @staticmethod
    def scores(space: PruningSpace) -> list[np.ndarray]:
        """The score of every channel on the one global scale: raw |gamma|, or the fallback above."""
        gammas = bn_scales(space)
        known = [g for g in gammas if g is not None]
        typical = float(np.concatenate(known).mean()) if known else 1.0
        magnitude = space.importance("bn_scale")  # L1 magnitude / its group mean where there is no BatchNorm
        return [g if g is not None else typical * np.asarray(m, dtype=np.float64) / (np.abs(m).mean() + 1e-12)
                for g, m in zip(gammas, magnitude)]

    def _search(self, task, target, episodes, rng):  # type: ignore[no-untyped-def]
        space, min_keep = task.space, task.settings.min_keep
        floors = _min_keep_counts(space, min_keep, target)
        tiebreak = [np.asarray(s, float) / (np.abs(s).mean() + 1e-12) for s in task.scores]
        strategy = _remove_in_order(space, _removal_order(self.scores(space), tiebreak), floors, target)
        return _spend_leftover(task, strategy, target, floors), 0


@SEARCHERS.register("elasticity")
class Elasticity(Searcher):
    """The allocation of channel pruning with filter elasticity (2024): per-layer dynamic thresholds keep
    every layer from being over-pruned, and a global importance ranking prunes above them.

    This library's form: each group's *floor* is the number of its channels that the dynamic-threshold
    rule of ``autoprune.sparsity`` protects (``dynamic_floors``): channels whose |gamma| is at or above
    their BatchNorm layer's threshold ``t_l = min(mean |gamma_l|, k-th largest |gamma_l|)``,
    ``k = ceil(0.25 C_l)`` -- at least a quarter of every layer; a group without BatchNorm applies the
    rule to its Taylor scores -- and at least ``min_keep`` of the group. Above the floors, channels are
    ranked globally by first-order Taylor importance (the ``taylor`` criterion, |mean(a * dL/da)| of the
    feature maps on ``importance_data``), each group's scores divided by their mean as in the ``global``
    ranking, and removed least important first until the FLOPs ratio is at most the target (bisection:
    ``PruningSpace.largest_within``).

    When the floors alone are over the target, every floor is moved down towards ``min_keep`` by one
    common fraction of its excess over ``min_keep``, the smallest whose floors fit (bisection again), and
    the ranking runs above those: the budget rule holds, and groups with higher floors keep more. Where whole channels are too coarse a
    step to land within the tolerance under the target, the strategy is repaired (``_spend_leftover``;
    no group below its floor). Within each group the task's criterion picks the channels. 0 proxy
    evaluations.
    """

    summary = "filter elasticity (2024): per-layer dynamic floors + global Taylor ranking"

    @staticmethod
    def floors(task: PruningTask) -> np.ndarray:
        """Each group's floor in channels: its dynamically protected channels and at least ``min_keep``."""
        space = task.space
        protected = _snap_up(space, dynamic_floors(space, _scores(task, "taylor")))
        return np.maximum(protected, _min_keep_counts(space, task.settings.min_keep, 1.0))

    def _search(self, task, target, episodes, rng):  # type: ignore[no-untyped-def]
        space, min_keep = task.space, task.settings.min_keep
        lowest = _min_keep_counts(space, min_keep, target)
        floors = np.maximum(self.floors(task), lowest)
        if _over(space, floors, target):  # the floors alone are over: scale them down towards min_keep
            def scaled(a: float) -> np.ndarray:
                return (lowest + a * (floors - lowest)) / space.channels

            floors = np.maximum(space.keep_counts(scaled(space.largest_within(scaled, target))), lowest)
        taylor = [np.asarray(s, float) / (np.abs(s).mean() + 1e-12) for s in _scores(task, "taylor")]
        strategy = _remove_in_order(space, _removal_order(taylor), floors, target)
        return _spend_leftover(task, strategy, target, floors), 0


@SEARCHERS.register("gradient-threshold")
class GradientThreshold(Searcher):
    """The allocation of structured pruning with gradient-based adaptive thresholds (2022): each layer's
    threshold adapts to the distribution of its channels' gradient-based importance.

    This library's form: channels are scored by the ``gradient`` criterion (|w * dL/dw| summed over the
    group's coupled weights, first-order weight saliency on ``importance_data``). Per group, the curve
    "fraction of its channels with score >= t" against the threshold ``t`` has a knee (the point
    farthest from its chord, ``knee_point``), whose fraction is the group's preferred keep ratio ``r_g``
    (``knee_keep_ratio``: its threshold axis ends below the top 5% of the scores, so a few outlier
    channels do not decide it; 0.5, the chord's midpoint, where the curve has no knee). One global scale ``s``
    then sets the strategy ``clip(s * r_g, min_keep, 1)``, the largest ``s`` whose FLOPs ratio is at most
    the target (bisection: ``PruningSpace.largest_within``), so groups keep their knees' proportions
    until they reach 1 or ``min_keep``. Where whole channels are too coarse a step to land within the
    tolerance under the target, the strategy is repaired (``_spend_leftover``). Within each group the
    task's criterion picks the channels. 0 proxy evaluations.
    """

    summary = "adaptive thresholds (2022): knee of each layer's gradient-importance curve"

    @staticmethod
    def preferred(task: PruningTask) -> np.ndarray:
        """Each group's preferred keep ratio (the knee of its curve)."""
        return np.array([knee_keep_ratio(s) for s in _scores(task, "gradient")])

    def _search(self, task, target, episodes, rng):  # type: ignore[no-untyped-def]
        space, min_keep = task.space, task.settings.min_keep
        lowest = _min_keep_counts(space, min_keep, target)  # an error where even those are over the target
        preferred = self.preferred(task)
        largest = 1.0 / preferred.min()  # the scale at which every group is whole

        def make(a: float) -> np.ndarray:
            return np.clip(a * largest * preferred, min_keep, 1.0)

        return _spend_leftover(task, make(space.largest_within(make, target)), target, lowest), 0
