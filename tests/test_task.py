import numpy as np
import pytest

from autoprune import AutopruneError
from autoprune.pruning import list_criteria
from autoprune.task import ACTION_MODES, PRIORS, REWARDS, PruningSettings, PruningTask


@pytest.fixture(scope="module")
def task(trained_small, digits):
    model, _ = trained_small
    return PruningTask(model, digits)


def test_settings_record_round_trips_and_reads_older_files():
    settings = PruningSettings(criterion="l2", round_to=8, prior="uniform", proxy_steps=5)
    assert PruningSettings.from_dict(settings.to_dict()) == settings
    # later fields read as their defaults, except those whose default changed since: as they ran then
    older = PruningSettings.from_dict({"criterion": "fpgm"})
    assert older == PruningSettings(criterion="fpgm", proxy="bn", proxy_measure="accuracy")
    assert (PruningSettings().proxy, PruningSettings().proxy_measure) == ("recon", "kl")
    assert PruningSettings.from_dict({"proxy": "recon"}).proxy_measure == "accuracy"  # recorded before the measure
    assert PruningSettings.from_policy_meta({"settings": settings.to_dict()}) == settings
    # policy.json before the record: settings at the top level; options that did not exist yet were off
    legacy = {"criterion": "l1", "min_keep": 0.2, "tolerance": 0.02, "round_to": 1, "reward": "relative",
              "proxy_images": 500, "proxy_finetune_steps": 50}
    read = PruningSettings.from_policy_meta(legacy)
    assert (read.min_keep, read.proxy_images, read.proxy_steps) == (0.2, 500, 50)
    assert (read.prior, read.fill_budget, read.action_mode) == ("uniform", False, "absolute")
    assert (read.proxy, read.proxy_measure) == ("bn", "accuracy")
    assert settings.replace(criterion=None, min_keep=0.3) == PruningSettings(criterion="l2", round_to=8, prior="uniform",
                                                                           proxy_steps=5, min_keep=0.3)


@pytest.mark.parametrize("field, value, message", [
    ("criterion", "nope", "unknown criterion"), ("prior", "best", "unknown prior 'best'"),
    ("action_mode", "relative", "unknown action mode"), ("reward", "nope", "unknown reward"),
    ("min_keep", 0.0, "min_keep"), ("round_to", 0, "round_to"), ("proxy_steps", -1, "proxy_steps"),
])
def test_settings_refuse_bad_values(field, value, message):
    with pytest.raises(AutopruneError, match=message):
        PruningSettings(**{field: value})


@pytest.mark.parametrize("mode", ACTION_MODES.names())
def test_every_action_mode_inverts_and_meets_the_budget(task, mode):
    derived = task.derive(action_mode=mode)
    episode = derived.episode()
    rng = np.random.default_rng(0)
    for target in (0.25, 0.5, 0.8):
        episode.reset(target)
        for ratio in (0.1, 0.3, episode.centre[0], 0.9, 1.0):
            assert episode.keep_ratio(episode.action_for(ratio)) == pytest.approx(ratio)
        strategy = episode.run(target, rng.uniform(-1, 1, task.space.num_groups))
        assert target - 0.02 <= task.space.flops_ratio(strategy) <= target + 1e-12
        assert episode.action_mode == mode


@pytest.mark.parametrize("prior", PRIORS.names())
def test_every_prior_is_where_zero_offset_actions_land(task, prior):
    derived = task.derive(prior=prior)
    for target in (0.3, 0.6):
        strategy = derived.episode().run(target, np.zeros(task.space.num_groups))
        np.testing.assert_array_equal(task.space.keep_counts(strategy), task.space.keep_counts(derived.prior_strategy(target)))
        assert derived.prior_baseline(target) == pytest.approx(derived.score(strategy))


@pytest.mark.parametrize("reward", REWARDS.names())
def test_every_reward_is_finite_and_relative_is_zero_at_the_prior(task, reward):
    derived = task.derive(reward=reward)
    strategy = derived.prior_strategy(0.5)
    value = derived.reward(derived.score(strategy), task.space.flops(strategy), 0.5)
    assert np.isfinite(value)
    if reward == "relative":
        assert value == pytest.approx(0.0)


def test_derive_shares_what_the_change_leaves_valid(task):
    other_reward = task.derive(reward="accuracy")
    assert other_reward.proxy is task.proxy and other_reward.space is task.space and other_reward.scores is task.scores
    other_proxy = task.derive(proxy_images=100)
    assert other_proxy.proxy is not task.proxy and other_proxy.proxy.num_images == 100
    assert task.derive(criterion="l2").scores is not task.scores


def test_every_criterion_builds_a_task(trained_small, digits, task):
    model, _ = trained_small
    for criterion in list_criteria():
        scores = PruningTask(model, digits, PruningSettings(criterion=criterion), space=task.space).scores
        assert [len(s) for s in scores] == task.space.channels.tolist()


def test_targets_the_model_cannot_reach_are_refused(task):
    with pytest.raises(AutopruneError, match="cannot be met"):
        task.check_target_range(task.floor / 2, 0.9)
    with pytest.raises(AutopruneError, match="low <= high"):
        task.check_target_range(0.8, 0.3)


def test_transferable_observations_do_not_depend_on_the_models_size():
    import torch

    from autoprune import models
    from autoprune.pruning import PruningSpace
    from autoprune.task.observation import OBSERVATIONS, group_kinds, make_observation

    x = torch.zeros(1, 3, 32, 32)
    spaces = {name: PruningSpace(models.create(name), x) for name in ("resnet20", "resnet56")}
    first = {name: make_observation("transferable").static(space)[0] for name, space in spaces.items()}
    # the stem of both ResNets is the same layer: the same features but its shares of FLOPs and parameters
    shape = slice(1, -2)
    np.testing.assert_allclose(first["resnet20"][shape], first["resnet56"][shape])
    layer = {name: make_observation("layer").static(space)[0] for name, space in spaces.items()}
    assert layer["resnet20"][0] == layer["resnet56"][0] == 0  # depth 0, the same under both sets
    kinds = [group_kinds(spaces["resnet20"], g) for g in spaces["resnet20"].groups]
    assert {"residual"} in kinds and set() in kinds  # the residual streams and the plain convolutions inside blocks
    concat = PruningSpace(models.create("concatnet"), torch.zeros(1, 3, 16, 16))
    assert any("concat" in group_kinds(concat, g) for g in concat.groups)
    for name in OBSERVATIONS.names():
        static = make_observation(name).static(spaces["resnet56"])
        assert static.shape == (spaces["resnet56"].num_groups, len(make_observation(name).static_features))
        assert static.min() >= 0 and static.max() <= 1


def test_reconstruction_setting_refits_every_pruned_model_the_task_builds(task):
    refit = task.derive(reconstruct=64)
    assert refit.proxy is not task.proxy  # the proxy scores reconstructed models: its own cache
    strategy = task.prior_strategy(0.4)
    plain, rebuilt = task.apply(strategy), refit.apply(strategy)
    report = rebuilt.autoprune_reconstruction
    assert report.layers and all(layer.error_after <= layer.error_before for layer in report.layers)
    assert not hasattr(plain, "autoprune_reconstruction")
    assert refit.score(strategy) >= task.score(strategy) - 0.02  # never much worse; usually better
    with pytest.raises(AutopruneError, match="reconstruct"):
        PruningSettings(reconstruct=-1)
