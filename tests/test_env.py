import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from autoprune import AutopruneError
from autoprune.envs import ENV_ID, ChannelPruningEnv
from autoprune.task import FEATURE, REWARDS


@pytest.fixture(scope="module")
def env(trained_small, digits):
    model, _ = trained_small
    return ChannelPruningEnv(model=model, splits=digits)


def run_episode(env, seed=None, target=None, policy=None):
    options = None if target is None else {"target": target}
    obs, info = env.reset(seed=seed, options=options)
    observations, done, reward = [obs], False, 0.0
    while not done:
        action = env.action_space.sample() if policy is None else policy(obs)
        obs, reward, done, truncated, info = env.step(action)
        observations.append(obs)
        assert not truncated
    return observations, reward, info


def test_gymnasium_and_sb3_checkers_pass(env):
    check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)


def test_registered_and_made_from_a_checkpoint(trained_small):
    _, path = trained_small
    env = gym.make(ENV_ID, checkpoint=str(path), target_range=(0.3, 0.8))
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and 0.3 <= info["target"] <= 0.8


def test_same_seed_gives_identical_episodes(env):
    env.action_space.seed(7)
    first = run_episode(env, seed=123)
    env.action_space.seed(7)
    second = run_episode(env, seed=123)
    assert all(np.array_equal(a, b) for a, b in zip(first[0], second[0]))
    assert first[1] == second[1]
    assert first[2]["strategy"] == second[2]["strategy"]


def test_random_episodes_always_meet_the_budget(env):
    env.action_space.seed(0)
    rng = np.random.default_rng(0)
    for i in range(200):
        target = float(rng.uniform(0.2, 0.9))
        _, _, info = run_episode(env, seed=i, target=target)
        assert target - 0.02 <= info["achieved_flops_ratio"] <= target + 1e-12, (target, info)
        assert info["achieved_flops_ratio"] == pytest.approx(env.task.space.flops_ratio(np.array(info["strategy"])))


def test_offset_actions_are_centred_on_the_uniform_strategy(trained_small, digits, env):
    model, _ = trained_small
    env = ChannelPruningEnv(model=model, splits=digits, prior="uniform", space=env.task.space)
    _, _, info = run_episode(env, target=0.5, policy=lambda obs: np.zeros(1, np.float32))
    uniform = env.task.space.uniform(0.5, env.task.settings.min_keep)
    np.testing.assert_allclose(info["strategy"], env.task.space.fill(uniform, 0.5))
    for ratio in (0.1, 0.3, env.episode.centre[0], 0.9, 1.0):
        assert env.episode.keep_ratio(env.episode.action_for(ratio)) == pytest.approx(ratio)


@pytest.mark.parametrize("action", [-1.0, 1.0])
def test_action_wall_holds_for_extreme_policies(env, action):
    for target in (0.2, 0.45, 0.9):
        _, _, info = run_episode(env, target=target, policy=lambda obs: np.array([action], np.float32))
        assert target - 0.02 <= info["achieved_flops_ratio"] <= target


def test_targets_are_drawn_from_a_continuous_range(env):
    targets = {env.reset(seed=s)[1]["target"] for s in range(30)}
    assert len(targets) == 30 and min(targets) >= 0.2 and max(targets) <= 0.9


def test_observation_carries_target_and_slack(env):
    obs, _ = env.reset(options={"target": 0.37})
    assert obs[FEATURE["target"]] == pytest.approx(0.37)
    assert 0 < obs[FEATURE["budget_slack"]] <= 0.37
    assert obs[FEATURE["group_index"]] == 0 and obs[FEATURE["previous_action"]] == 1.0


def test_info_at_episode_end(env):
    _, reward, info = run_episode(env, target=0.5)
    for key in ("strategy", "kept_channels", "achieved_flops_ratio", "proxy_accuracy", "target", "time"):
        assert key in info
    assert 0 <= info["proxy_accuracy"] <= 1
    assert len(info["strategy"]) == env.task.space.num_groups
    # a repeated strategy is served from the cache
    ratios = iter(info["strategy"])

    def replay(obs):
        return np.array([env.episode.action_for(next(ratios))], np.float32)

    _, reward2, info2 = run_episode(env, target=0.5, policy=replay)
    assert info2["kept_channels"] == info["kept_channels"] and info2["time"]["cached"] and reward2 == reward


@pytest.mark.parametrize("reward", REWARDS.names())
def test_every_reward_variant(trained_small, digits, env, reward):
    model, _ = trained_small
    env2 = ChannelPruningEnv(model=model, splits=digits, reward=reward, space=env.task.space)
    _, value, info = run_episode(env2, target=0.5)
    assert np.isfinite(value) and info["reward_name"] == reward
    if reward == "accuracy":
        assert value == info["proxy_accuracy"]


def test_adaptive_bn_changes_the_proxy(trained_small, digits, env):
    model, _ = trained_small
    adapted, plain = (ChannelPruningEnv(model=model, splits=digits, proxy="bn", adaptive_bn=flag, space=env.task.space)
                      for flag in (True, False))
    strategy = env.task.space.uniform(0.3)
    assert adapted.task.score(strategy) != plain.task.score(strategy)
    assert env.task.proxy.name == "recon" and not env.task.proxy.adaptive_bn  # the default keeps the BN statistics


def test_bad_inputs_are_clear_errors(trained_small, digits, env):
    model, _ = trained_small
    with pytest.raises(AutopruneError, match="target"):
        env.reset(options={"target": 1.5})
    with pytest.raises(AutopruneError, match="target"):
        env.reset(options={"target": 0.0})
    env.reset(options={"target": 0.5})
    with pytest.raises(AutopruneError, match="action"):
        env.step(np.array([3.0], np.float32))
    with pytest.raises(AutopruneError, match="too small"):
        ChannelPruningEnv(model=model, splits=digits, proxy_images=5, space=env.task.space)
    with pytest.raises(AutopruneError, match="unknown reward"):
        ChannelPruningEnv(model=model, splits=digits, reward="nope", space=env.task.space)
    with pytest.raises(AutopruneError, match="either"):
        ChannelPruningEnv(splits=digits)
    with pytest.raises(AutopruneError, match="unknown argument"):
        ChannelPruningEnv(model=model, splits=digits, proxy_finetune_steps=3)
    with pytest.raises(AutopruneError, match="not both"):
        ChannelPruningEnv(env.task, reward="accuracy")
    run_episode(env, target=0.5)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.zeros(1, np.float32))


def test_round_to_env_meets_the_budget_with_multiples(trained_small, digits):
    model, _ = trained_small
    env = ChannelPruningEnv(model=model, splits=digits, round_to=8, target_range=(0.3, 0.9))
    env.action_space.seed(1)
    for i in range(30):
        _, _, info = run_episode(env, seed=i)
        assert info["achieved_flops_ratio"] <= info["target"] + 1e-12
        assert all(c % 8 == 0 or c == full for c, full in zip(info["kept_channels"], env.task.space.channels))


def test_fill_budget_ends_episodes_closer_to_the_target(trained_small, digits, env):
    model, _ = trained_small
    unfilled = ChannelPruningEnv(model=model, splits=digits, fill_budget=False, space=env.task.space)
    gaps = {True: [], False: []}
    for fill, e in ((True, env), (False, unfilled)):
        e.action_space.seed(3)
        for i in range(40):
            target = 0.2 + 0.7 * i / 39
            _, _, info = run_episode(e, seed=i, target=target)
            assert info["achieved_flops_ratio"] <= target + 1e-12
            gaps[fill].append(target - info["achieved_flops_ratio"])
    assert np.mean(gaps[True]) < 0.5 * np.mean(gaps[False])
    assert max(gaps[True]) <= 0.02  # one channel of the first group is ~2% of this tiny model


def test_proxy_steps_train_the_pruned_model_before_scoring(trained_small, digits, env):
    model, _ = trained_small
    tuned = ChannelPruningEnv(model=model, splits=digits, proxy_steps=5, space=env.task.space)
    strategy = env.task.space.fill(env.task.space.uniform(0.3, env.task.settings.min_keep), 0.3)
    first = tuned.task.score(strategy)
    tuned.task.proxy.cache.clear()
    assert tuned.task.score(strategy) == first  # the same steps on the same batches: repeatable
    assert first != env.task.score(strategy)
    with pytest.raises(AutopruneError, match="proxy_steps"):
        ChannelPruningEnv(model=model, splits=digits, proxy_steps=-1, space=env.task.space)


def test_prior_baseline_is_measured_on_a_grid_and_interpolated(trained_small, digits, env):
    model, _ = trained_small
    fresh = ChannelPruningEnv(model=model, splits=digits, prior="uniform", space=env.task.space)
    step = fresh.task.BASELINE_STEP
    at_anchor = fresh.task.prior_baseline(0.5)
    expected = fresh.task.score(fresh.task.space.fill(fresh.task.space.uniform(0.5, fresh.task.settings.min_keep), 0.5))
    assert at_anchor == pytest.approx(expected)
    lo, hi = fresh.task.prior_baseline(0.5), fresh.task.prior_baseline(0.5 + step)
    assert fresh.task.prior_baseline(0.5 + step / 4) == pytest.approx(0.75 * lo + 0.25 * hi)
    for target in np.linspace(0.3, 0.7, 40):  # 40 distinct targets, 9 anchors
        fresh.task.prior_baseline(float(target))
    assert len(fresh.task._baselines) <= round(0.4 / step) + 1


@pytest.mark.parametrize("prior", ["global", "uniform"])
def test_zero_offset_actions_give_the_priors_strategy(trained_small, digits, env, prior):
    model, _ = trained_small
    env2 = ChannelPruningEnv(model=model, splits=digits, prior=prior, space=env.task.space)
    _, _, info = run_episode(env2, target=0.5, policy=lambda obs: np.zeros(1, np.float32))
    space = env.task.space
    if prior == "global":
        expected = space.global_ranking(0.5, env2.task.scores, env2.task.settings.min_keep)
    else:
        expected = space.uniform(0.5, env2.task.settings.min_keep)
    assert info["kept_channels"] == space.keep_counts(space.fill(expected, 0.5)).tolist()
    assert env2.task.prior_baseline(0.5) == pytest.approx(info["proxy_accuracy"])


def test_unknown_prior_is_a_clear_error(trained_small, digits):
    model, _ = trained_small
    with pytest.raises(AutopruneError, match="unknown prior 'best'"):
        ChannelPruningEnv(model=model, splits=digits, prior="best")
