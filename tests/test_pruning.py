import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from autoprune import AutopruneError, models
from autoprune.pruning import PruningSpace, count_flops, count_params, list_criteria
from autoprune.pruning.importance import needs_data

X = torch.randn(2, 3, 32, 32)
ZOO = models.list_models()


@pytest.fixture(scope="module")
def spaces():
    torch.manual_seed(0)
    built = {}
    for name in ZOO:
        model = models.create(name).eval()
        for m in model.modules():  # non-trivial BN statistics, so masking checks mean something
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
                m.weight.data.uniform_(0.5, 1.5)
        built[name] = (model, PruningSpace(model, X[:1]))
    return built


@pytest.mark.parametrize("name", ZOO)
def test_closed_form_flops_match_flop_counter_dense_and_pruned(spaces, name):
    model, space = spaces[name]
    assert space.flops() == count_flops(model, X)
    rng = np.random.default_rng(1)
    for strategy in (rng.uniform(0.05, 1, space.num_groups), np.full(space.num_groups, 0.5), np.zeros(space.num_groups)):
        pruned = space.apply(strategy)
        assert count_flops(pruned, X) == space.flops(strategy)


@pytest.mark.parametrize("name", ZOO)
def test_apply_makes_a_smaller_model_and_leaves_the_base_alone(spaces, name):
    model, space = spaces[name]
    before = copy.deepcopy(model.state_dict())
    strategy = np.random.default_rng(2).uniform(0.2, 0.9, space.num_groups)
    pruned = space.apply(strategy)
    out = pruned(X)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert count_flops(pruned, X) < count_flops(model, X)
    assert count_params(pruned) < count_params(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", ZOO)
def test_pruning_equals_zeroing_the_removed_channels(spaces, name):
    """The pruned model computes exactly what the dense model computes with those channels zeroed."""
    model, space = spaces[name]
    assert_pruning_equals_zeroing(model, space)


@pytest.mark.parametrize("criterion", list_criteria())
def test_every_criterion_scores_every_group_and_prunes(spaces, criterion):
    """Every registered criterion, given data only where it ``needs_data``: one score per channel per group."""
    model, space = spaces["resnet20"]
    data = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(2)] if needs_data(criterion) else None
    scores = space.importance(criterion, data, refresh=True)
    assert [len(s) for s in scores] == [g.channels for g in space.groups]
    assert all(np.isfinite(s).all() for s in scores)
    if criterion != "random":
        assert any(s.std() > 0 for s in scores)
    for strategy in (np.full(space.num_groups, 0.5), np.random.default_rng(4).uniform(0.1, 1, space.num_groups)):
        pruned = space.apply(strategy, criterion, data)
        assert pruned(X).shape == (2, 10)
        assert count_flops(pruned, X) == space.flops(strategy)


def test_magnitude_criterion_removes_the_smallest_filters():
    model = models.create("smallcnn").eval()
    first = model.features[0][0]
    with torch.no_grad():
        first.weight.mul_(0.01)
        first.weight[3] = 1.0  # the only large filter of the first group
    space = PruningSpace(model, X[:1])
    strategy = np.ones(space.num_groups)
    strategy[0] = 1 / 16  # keep one channel of 16
    pruned = space.apply(strategy, "l1")
    kept = pruned.features[0][0].weight
    assert kept.shape[0] == 1 and torch.allclose(kept[0], first.weight[3])


DATA_CRITERIA = [c for c in list_criteria() if needs_data(c)]


def test_needs_data_names_the_data_dependent_criteria():
    assert set(DATA_CRITERIA) >= {"gradient", "taylor", "entropy"}
    assert not needs_data("l1") and not needs_data("random")
    with pytest.raises(AutopruneError, match="unknown importance criterion"):
        needs_data("l3")


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_data_dependent_criterion_without_data_is_a_clear_error(spaces, criterion):
    _, space = spaces["smallcnn"]
    with pytest.raises(AutopruneError, match=rf"criterion '{criterion}' needs data: pass a few training batches") as err:
        space.importance(criterion, None, refresh=True)
    assert "l1" in str(err.value)  # names the criteria that need none
    with pytest.raises(AutopruneError, match="is empty"):
        space.importance(criterion, [], refresh=True)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4))
def test_property_random_strategies_on_concat_net(spaces, ratios):
    model, space = spaces["concatnet"]
    pruned = space.apply(ratios)
    assert count_flops(pruned, X) == space.flops(ratios) <= space.flops()


def test_groups_are_in_forward_order_and_classifier_is_kept(spaces):
    model, space = spaces["resnet20"]
    assert space.num_groups == 12  # 9 inner block convs + 3 residual streams
    assert space.groups[0].root == "conv1"
    assert space.output_layer == "fc"
    assert all("fc" != g.root for g in space.groups)
    pruned = space.apply(np.zeros(space.num_groups))
    assert pruned.fc.out_features == 10


def test_keep_counts_rounding_and_bounds(spaces):
    _, space = spaces["smallcnn"]  # groups of 16, 32, 32, 64 channels
    assert space.keep_counts([0.5, 0.5, 0.5, 0.5]).tolist() == [8, 16, 16, 32]
    assert space.keep_counts([0.0, 0.01, 1.0, 0.51]).tolist() == [1, 1, 32, 33]


def test_round_to_keeps_hardware_friendly_counts():
    model = models.create("resnet20").eval()
    space = PruningSpace(model, X[:1], round_to=8)
    assert space.allowed_counts(0).tolist() == [8, 16]
    for strategy in (np.full(space.num_groups, 0.3), np.random.default_rng(0).uniform(0, 1, space.num_groups)):
        counts = space.keep_counts(strategy)
        assert all(c % 8 == 0 or c == space.channels[g] for g, c in enumerate(counts))
        assert count_flops(space.apply(strategy), X) == space.flops(strategy)
    assert space.flops_ratio(space.uniform(0.5)) <= 0.5


@pytest.mark.parametrize("target", [0.3, 0.5, 0.77])
def test_uniform_meets_the_target(spaces, target):
    _, space = spaces["resnet56"]
    strategy = space.uniform(target)
    assert len(set(strategy.tolist())) == 1
    assert space.flops_ratio(strategy) <= target
    assert space.flops_ratio(np.minimum(strategy + 0.03, 1)) > target - 0.05


@pytest.mark.parametrize("target", [0.25, 0.5, 0.8])
def test_fill_spends_the_budget_without_dropping_channels(spaces, target):
    _, space = spaces["resnet56"]
    rng = np.random.default_rng(int(target * 100))
    for _ in range(5):
        strategy = rng.uniform(0.1, 1, space.num_groups)
        while space.flops_ratio(strategy) > target:  # an arbitrary strategy under the budget
            strategy *= 0.95
        filled = space.fill(strategy, target)
        assert np.all(space.keep_counts(filled) >= space.keep_counts(strategy))
        assert target - 0.005 <= space.flops_ratio(filled) <= target
    over = np.ones(space.num_groups)
    np.testing.assert_array_equal(space.fill(over, target), over)


@pytest.mark.parametrize("name", ["resnet56", "mobilenetv2", "vgg16_bn"])
def test_global_ranking_meets_the_target_and_follows_the_scores(spaces, name):
    _, space = spaces[name]
    scores = space.importance("l1")
    for target in (0.3, 0.6):
        strategy = space.global_ranking(target, scores, min_keep=0.1)
        assert target - 0.02 <= space.flops_ratio(strategy) <= target
        assert np.all(space.keep_counts(strategy) >= space.keep_counts(np.full(space.num_groups, 0.1)))
    # channels far below their group's mean score go first, wherever they are
    skewed = [s.copy() for s in scores]
    skewed[0] = np.full(len(skewed[0]), 1e-4)
    skewed[0][-1] = 1.0
    assert space.keep_counts(space.global_ranking(0.5, skewed))[0] == 1
    with pytest.raises(AutopruneError, match="importance scores for"):
        space.global_ranking(0.5, scores[:-1])


def test_fill_with_coarse_channel_steps():
    space = PruningSpace(models.create("resnet20").eval(), X[:1], round_to=8)
    uniform = space.uniform(0.5)  # 8 of 16 channels, 16 of 32 ...: FLOPs ratio ~0.45
    filled = space.fill(uniform, 0.5)
    assert space.flops_ratio(uniform) < 0.46 and 0.48 <= space.flops_ratio(filled) <= 0.5
    assert all(c % 8 == 0 or c == full for c, full in zip(space.keep_counts(filled), space.channels))


def test_bad_strategies_and_targets_are_clear_errors(spaces):
    _, space = spaces["smallcnn"]
    with pytest.raises(AutopruneError, match="4 keep ratios"):
        space.apply([0.5, 0.5])
    with pytest.raises(AutopruneError, match=r"\[0, 1\]"):
        space.apply([0.5, 0.5, 1.5, 0.5])
    for bad in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(AutopruneError, match="target"):
            space.uniform(bad)
    with pytest.raises(AutopruneError, match="smallest FLOPs ratio"):
        space.uniform(1e-6)


def test_model_without_prunable_groups_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(AutopruneError, match="no prunable channel group"):
        PruningSpace(model, torch.randn(1, 3, 2, 2))


class GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.b = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.b(self.g(self.a(x))).mean((2, 3)))


def test_unsupported_structure_is_excluded_with_a_reason():
    space = PruningSpace(GroupedNet(), torch.randn(1, 3, 8, 8))
    assert [g.root for g in space.groups] == ["b"]
    assert {e.root for e in space.excluded} == {"a", "g"}
    assert all("grouped convolution" in e.reason for e in space.excluded)
    assert "excluded" in space.describe()



# torchvision CNNs that build and trace at 32x32 within a few seconds each (DenseNet-121 and ConvNeXt-T,
# slower, were checked the same way by hand: 120 groups, and 22 groups with nothing excluded)
TORCHVISION = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "squeezenet1_0", "googlenet",
               "mnasnet0_5", "shufflenet_v2_x0_5", "regnet_x_400mf", "resnext50_32x4d"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_cnns_prune_what_is_safe_and_say_why_not_the_rest(name):
    torch.manual_seed(0)
    model = models.create(f"tv:{name}", num_classes=10).eval()
    space = PruningSpace(model, X[:1])  # validation: every group pruned at 0.5, FLOPs = closed form
    assert space.num_groups > 0
    assert all(e.reason for e in space.excluded)
    half = np.full(space.num_groups, 0.5)
    assert count_flops(space.apply(half), X[:1]) == space.flops(half) < space.flops()


def test_channel_shuffle_groups_are_excluded_and_the_rest_prunes_exactly():
    """ShuffleNetV2: the branch-internal groups, the stem and the last conv prune; the channels that meet
    at the concat before each channel shuffle (and the stride-2 inputs after one) are excluded."""
    torch.manual_seed(0)
    model = models.create("tv:shufflenet_v2_x0_5", num_classes=10).eval()
    space = PruningSpace(model, X[:1])
    roots = {g.root for g in space.groups}
    assert {"conv1.0", "conv5.0", "stage2.0.branch2.3", "stage4.3.branch2.3"} <= roots
    excluded = {e.root: e.reason for e in space.excluded}
    assert {"stage2.0.branch2.5", "stage2.0.branch1.2", "stage3.0.branch1.0"} <= set(excluded)
    assert all("channel shuffle" in reason for reason in excluded.values())
    assert not roots & set(excluded)
    # what is pruned is exactly the dense model with those channels zeroed (no channel mixed up by the shuffle)
    assert_pruning_equals_zeroing(model, space)


class ShuffleNet(nn.Module):
    """A conv, a channel shuffle written as view/transpose/view, a conv, a classifier."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.a(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(self.c(self.b(x)).flatten(2).mean(2))


def test_channels_through_a_shuffle_are_excluded_the_others_pruned():
    space = PruningSpace(ShuffleNet(), torch.randn(1, 3, 8, 8))
    assert [g.root for g in space.groups] == ["b", "c"]
    assert [e.root for e in space.excluded] == ["a"]
    assert "channel shuffle" in space.excluded[0].reason and "view" in space.excluded[0].reason


def assert_pruning_equals_zeroing(model, space, seed=3):
    """The pruned model computes exactly what the dense model computes with the removed channels zeroed."""
    strategy = np.random.default_rng(seed).uniform(0.3, 0.9, space.num_groups)
    modules = dict(model.named_modules())
    handles = []
    for (layer, is_out), idxs in space.removed_channels(strategy).items():
        if is_out and layer in modules:
            def zero(module, inputs, output, idxs=idxs):
                output = output.clone()
                output[:, idxs] = 0
                return output
            handles.append(modules[layer].register_forward_hook(zero))
    try:
        with torch.no_grad():
            expected = model(X)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        actual = space.apply(strategy).eval()(X)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
