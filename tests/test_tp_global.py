"""Torch-Pruning's own global pruning as a baseline: the model it prunes, bisected to a FLOPs target."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from autoprune import AutopruneError, models
from autoprune.pruning import PruningSpace, count_flops
from autoprune.pruning.tp_global import kept_channels, torch_pruning_global, torch_pruning_global_to_target

X = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module", params=["resnet20", "concatnet", "smallcnn"])
def space(request):
    torch.manual_seed(0)
    return PruningSpace(models.create(request.param).eval(), X)


@pytest.mark.parametrize("target", [0.3, 0.6])
def test_bisected_to_the_target_and_the_closed_form_flops_hold(space, target):
    ratios, pruned = torch_pruning_global_to_target(space, target)
    measured = count_flops(pruned, X) / space.dense_flops
    assert target - 0.02 <= measured <= target
    assert space.flops_ratio(ratios) == pytest.approx(measured, abs=1e-9)
    assert ratios.min() > 0 and ratios.max() <= 1.0  # torch-pruning keeps a channel per layer, no more
    assert pruned(X).shape == (1, 10)
    assert np.array_equal(kept_channels(space, space.model), space.channels)  # the base is left alone


def test_it_removes_the_channels_with_the_smallest_l2_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    with torch.no_grad():
        model[0].weight[[1, 5]] *= 1e-3  # two filters of the first conv are almost zero
        model[0].bias[[1, 5]] = 0
    space = PruningSpace(model, X)
    pruned = torch_pruning_global(model, X, 0.125, ignored_layers=[space.output_layer])
    assert pruned[0].out_channels == 6 and pruned[2].out_channels == 8  # 2 of 16 channels, both from the first conv
    kept = {tuple(w.flatten().tolist()) for w in pruned[0].weight}
    assert kept == {tuple(model[0].weight[i].flatten().tolist()) for i in (0, 2, 3, 4, 6, 7)}


def test_bad_ratio_and_unreachable_target_are_clear_errors():
    space = PruningSpace(models.create("smallcnn").eval(), X)
    with pytest.raises(AutopruneError, match="pruning_ratio"):
        torch_pruning_global(space.model, space.example_inputs, 1.0)
    with pytest.raises(AutopruneError, match="cannot reach"):
        torch_pruning_global_to_target(space, 0.0005)


def test_prune_and_evaluate_use_torch_prunings_own_model(trained_small, digits, tmp_path):
    from autoprune.agents.evaluate import evaluate_methods
    from autoprune.checkpoint import load_pruned
    from autoprune.cli import main
    from autoprune.pruning import count_params
    from autoprune.task import PruningTask

    model, ckpt = trained_small
    task = PruningTask(model, digits)
    _, expected = torch_pruning_global_to_target(task.space, 0.5)
    rows = evaluate_methods(task, [0.5], baselines=["tp-global"], recipe=None, log=lambda s: None)
    assert rows[0]["params"] == count_params(expected)
    assert 0.48 <= rows[0]["achieved_flops_ratio"] <= 0.5
    out = tmp_path / "tp.pt"
    assert main(["prune", "--method", "tp-global", "--checkpoint", str(ckpt), "--target", "0.5", "--out", str(out)]) == 0
    pruned = load_pruned(out)
    for a, b in zip(pruned.state_dict().values(), expected.state_dict().values()):
        if a.is_floating_point() and a.shape == b.shape and a.ndim > 1:  # the same channels as torch-pruning kept
            torch.testing.assert_close(a, b)
    assert count_params(pruned) == count_params(expected)
