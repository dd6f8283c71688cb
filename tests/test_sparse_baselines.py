"""The BatchNorm-scale and threshold baselines: slimming, elasticity, gradient-threshold."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import in_budget

from autoprune import models
from autoprune.agents.baselines import create_searcher, list_searchers
from autoprune.agents.thresholds import (
    Elasticity,
    GradientThreshold,
    Slimming,
    dynamic_floors,
    knee_keep_ratio,
    knee_point,
)
from autoprune.sparsity import layer_threshold
from autoprune.task import PruningSettings, PruningTask

NEW = ["slimming", "elasticity", "gradient-threshold"]
NEAR_ZERO_2 = list(range(12))  # channels of features.2.1 (group 2, 32 channels) with |gamma| ~ 1e-4
NEAR_ZERO_0 = [1, 5, 9]  # channels of features.0.1 (group 0, 16 channels) with |gamma| = 1e-3
FAST = PruningSettings(proxy_images=40, calib_batches=1)  # a cheap proxy: these tests are about allocation


def gamma_model():
    """An untrained smallcnn with chosen BatchNorm scales: uniform in [0.5, 1.5], some channels nearly off,
    and every scale of features.1.1 equal (so the dynamic threshold protects that whole layer)."""
    torch.manual_seed(0)
    model = models.create("smallcnn")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5)
        bns[2].weight[NEAR_ZERO_2] = 1e-4 * torch.arange(1.0, 13.0)
        bns[0].weight[NEAR_ZERO_0] = 1e-3
        bns[1].weight.fill_(1.0)
    return model


@pytest.fixture(scope="module")
def gamma_task(digits):
    return PruningTask(gamma_model(), digits, FAST)


@pytest.fixture(scope="module")
def concat_task(digits):
    """ConcatNet: a group couples three BatchNorm layers through a residual add."""
    torch.manual_seed(1)
    model = models.create("concatnet")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.2, 1.5)
    return PruningTask(model, digits, FAST)


@pytest.mark.parametrize("name", NEW)
def test_new_baselines_meet_the_budget(gamma_task, concat_task, name):
    assert name in list_searchers()
    for t in (gamma_task, concat_task):
        for target in (0.3, 0.5, 0.7):
            result = create_searcher(name).search(t, target)
            assert in_budget(t.space.flops_ratio(result.strategy), target), (name, target)
            assert result.strategy.min() >= t.settings.min_keep and result.strategy.max() <= 1
            assert result.episodes == 0 and 0 <= result.proxy_accuracy <= 1


@pytest.mark.parametrize("name", NEW)
def test_new_baselines_never_exceed_the_target_with_coarse_rounding(gamma_task, name):
    coarse = gamma_task.derive(round_to=8)
    for target in (0.3, 0.5, 0.7):
        strategy = create_searcher(name).search(coarse, target).strategy
        assert coarse.space.flops_ratio(strategy) <= target
        assert np.all(coarse.space.keep_counts(strategy) % 8 == 0)


def test_slimming_removes_the_smallest_scales_of_the_model_first(gamma_task):
    space = gamma_task.space
    result = create_searcher("slimming").search(gamma_task, 0.7)
    kept = space.keep_counts(result.strategy)
    removed = space.removed_channels(result.strategy, "bn_scale")
    # the 15 nearly-off channels go first, wherever they are, and at 0.7 nothing else
    assert set(NEAR_ZERO_2) <= set(removed[("features.2.1", True)])
    assert set(NEAR_ZERO_0) <= set(removed[("features.0.1", True)])
    assert (space.channels - kept).sum() == len(NEAR_ZERO_2) + len(NEAR_ZERO_0)
    # one global threshold on the raw scales: every removed |gamma| is below every kept one
    scales = {name: m.weight.detach().abs() for name, m in space.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    gone = torch.cat([scales[name][idxs] for (name, _), idxs in removed.items() if name in scales])
    mask = {name: torch.ones_like(s, dtype=torch.bool) for name, s in scales.items()}
    for (name, _), idxs in removed.items():
        if name in mask:
            mask[name][idxs] = False
    left = torch.cat([scales[name][mask[name]] for name in scales])
    assert gone.max() < left.min()
    # the task prunes with l1, so the searcher hands over its own model: no nearly-off channel left in it
    assert result.model is not None
    assert all(m.weight.abs().min() > 1e-2 for m in result.pruned(gamma_task).modules() if isinstance(m, nn.BatchNorm2d))
    # deeper: group 2 loses its smallest scales first and is the most pruned
    deeper = create_searcher("slimming").search(gamma_task, 0.5)
    assert set(NEAR_ZERO_2) <= set(space.removed_channels(deeper.strategy, "bn_scale")[("features.2.1", True)])
    assert np.argmin(deeper.strategy) == 2


def test_slimming_under_the_bn_scale_criterion_leaves_the_channels_to_the_task(gamma_task):
    bn_task = gamma_task.derive(criterion="bn_scale")
    ours = create_searcher("slimming").search(bn_task, 0.6)
    assert ours.model is None
    np.testing.assert_array_equal(ours.strategy, create_searcher("slimming").search(gamma_task, 0.6).strategy)


def test_slimming_ranks_a_group_without_batchnorm_on_the_typical_scale(digits):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),  # no BatchNorm
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.1, 2.0)
    no_bn = PruningTask(model, digits, FAST)
    scores = Slimming.scores(no_bn.space)
    gammas = np.concatenate([model[1].weight.detach().abs().numpy(), model[6].weight.detach().abs().numpy()])
    assert scores[1].mean() == pytest.approx(gammas.mean())
    np.testing.assert_allclose(scores[0], model[1].weight.detach().abs().numpy(), rtol=1e-6)
    for target in (0.4, 0.6):
        assert in_budget(no_bn.space.flops_ratio(create_searcher("slimming").search(no_bn, target).strategy), target)


def test_dynamic_floors_follow_the_sparsity_rule(gamma_task):
    floors = Elasticity.floors(gamma_task)
    scales = [m.weight.detach().abs() for m in gamma_task.space.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert floors[1] == 32  # equal scales: the whole layer is at its threshold
    for g, a in enumerate(scales):
        protected = int((a >= layer_threshold(a)).sum())
        assert floors[g] == max(protected, math.ceil(0.1 * a.numel()))
        assert protected >= math.ceil(0.25 * a.numel())
    # the hand-made rule: 4 scales of 1 and 12 of 0.01 -> t = min(mean, 4th largest) = 0.2575: 4 protected
    space = gamma_task.space
    with torch.no_grad():
        bn = space.model.features[0][1]
        saved = bn.weight.clone()
        bn.weight.copy_(torch.tensor([1.0] * 4 + [0.01] * 12))
        try:
            assert dynamic_floors(space, [np.ones(c) for c in space.channels])[0] == 4
        finally:
            bn.weight.copy_(saved)


def test_elasticity_keeps_every_group_at_or_above_its_dynamic_floor(gamma_task, concat_task):
    for t in (gamma_task, concat_task):
        floors = Elasticity.floors(t)
        floor_ratio = t.space.flops_of_counts(floors[:, None])[0] / t.space.dense_flops
        for target in (0.3, 0.5, 0.6, 0.7):
            strategy = create_searcher("elasticity").search(t, target).strategy
            kept = t.space.keep_counts(strategy)
            assert in_budget(t.space.flops_ratio(strategy), target)
            if floor_ratio <= target:
                assert np.all(kept >= floors), (target, kept, floors)
            else:  # the floors alone are over: scaled down (the whole layer of equal scales gives way)
                assert np.all(kept >= t.space.keep_counts(np.full(len(kept), t.settings.min_keep)))
    # the whole layer of equal scales is protected wherever the target allows it
    floors = Elasticity.floors(gamma_task)
    assert gamma_task.space.flops_of_counts(floors[:, None])[0] / gamma_task.space.dense_flops < 0.5
    assert gamma_task.space.keep_counts(create_searcher("elasticity").search(gamma_task, 0.5).strategy)[1] == 32
    assert gamma_task.space.keep_counts(create_searcher("elasticity").search(gamma_task, 0.3).strategy)[1] < 32


def test_knee_point_of_a_hand_made_curve():
    assert knee_point([0.0, 0.1, 0.2, 0.5, 1.0], [1.0, 0.3, 0.25, 0.1, 0.0])[0] == 1
    assert knee_point([0.0, 0.5, 0.9, 1.0], [1.0, 0.95, 0.8, 0.0])[0] == 2  # concave: the knee is late
    assert knee_point([0.0, 0.5, 1.0], [1.0, 0.5, 0.0]) == (0, 0.0)  # straight: no knee


def test_knee_keep_ratio_finds_the_cluster_of_important_channels():
    low, high = np.linspace(0, 0.1, 10), np.linspace(0.9, 1.0, 6)
    assert knee_keep_ratio(np.concatenate([high, low])) == pytest.approx(6 / 16)
    assert knee_keep_ratio(np.concatenate([np.linspace(0, 0.1, 4), np.linspace(0.9, 1.0, 12)])) == pytest.approx(12 / 16)
    assert knee_keep_ratio(np.linspace(0, 1, 16)) == 0.5  # evenly spread: no knee
    assert knee_keep_ratio(np.ones(8)) == 0.5
    # a small upper cluster, still above the top 5% set aside as possible outliers
    small = np.concatenate([np.linspace(0, 0.1, 36), np.linspace(0.9, 1.0, 4)])
    assert knee_keep_ratio(small) == pytest.approx(4 / 40)
    assert knee_keep_ratio(np.concatenate([np.zeros(14), np.ones(2)])) == pytest.approx(2 / 16)


def test_knee_keep_ratio_of_degenerate_groups():
    for scores in ([], [3.0], np.ones(8), np.zeros(8), [0.0, 1.0], np.full(5, -2.0)):
        assert knee_keep_ratio(scores) == 0.5
    # at most the set-aside top differs from the rest, which is constant: no knee
    assert knee_keep_ratio(np.concatenate([np.zeros(15), [1.0]])) == 0.5


@pytest.mark.parametrize("channels", [8, 16, 32, 64, 256])
def test_knee_keep_ratio_ignores_a_few_outlier_scores(channels):
    rng = np.random.default_rng(channels)
    for n_out in range(1, max(1, channels // 20) + 1):  # up to 5% of the channels, at least one
        out = rng.uniform(50, 1000, n_out)
        # evenly spread below them: no knee, as without the outliers (the old axis gave 1/C)
        even = np.linspace(0, 1, channels - n_out)
        assert knee_keep_ratio(even) == 0.5
        assert knee_keep_ratio(rng.permutation(np.concatenate([even, out]))) == 0.5
        if channels < 16:
            continue
        # two clusters below them: the upper cluster's size, the outliers added to it
        upper = channels // 4
        rest = np.concatenate([rng.uniform(0, 0.1, channels - n_out - upper), rng.uniform(0.9, 1.0, upper)])
        assert round(knee_keep_ratio(rest) * len(rest)) == upper
        assert round(knee_keep_ratio(np.concatenate([rest, out])) * channels) == upper + n_out


def test_knee_keep_ratio_of_heavy_tailed_scores_is_not_decided_by_the_top():
    scores = np.random.default_rng(0).exponential(size=64)
    base = knee_keep_ratio(scores)
    assert base > 0.1
    spiked = scores.copy()
    spiked[np.argmax(scores)] = 1e4  # one channel far above the tail
    assert knee_keep_ratio(spiked) == base


def test_gradient_threshold_scales_the_knees_by_one_factor(gamma_task, monkeypatch):
    task = gamma_task
    preferred = np.array([0.2, 0.4, 0.8, 0.3])
    monkeypatch.setattr(GradientThreshold, "preferred", staticmethod(lambda t: preferred))
    strategy = create_searcher("gradient-threshold").search(task, 0.3).strategy
    assert in_budget(task.space.flops_ratio(strategy), 0.3)
    free = (strategy > task.settings.min_keep) & (strategy < 1)
    assert free.sum() >= 2
    np.testing.assert_allclose(strategy[free] / preferred[free], (strategy / preferred)[free][0])
    assert np.all(GradientThreshold.preferred(task) == preferred)


def test_a_single_free_group_too_coarse_for_the_window_is_repaired(gamma_task, monkeypatch):
    # every group but one whole: a channel of group 2 is over 2% of the FLOPs, so at 0.7 the scale alone
    # ends at 0.679; the repair moves channels between groups
    monkeypatch.setattr(GradientThreshold, "preferred", staticmethod(lambda t: np.array([1.0, 1.0, 0.5, 1.0])))
    space = gamma_task.space
    for target in (0.6, 0.65, 0.7, 0.75):
        strategy = create_searcher("gradient-threshold").search(gamma_task, target).strategy
        assert in_budget(space.flops_ratio(strategy), target), target
        assert np.all(space.keep_counts(strategy) >= space.keep_counts(np.full(4, gamma_task.settings.min_keep)))
