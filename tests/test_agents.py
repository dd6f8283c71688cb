import csv
import json

import numpy as np
import pytest
import torch

from autoprune import AutopruneError, models
from autoprune.agents import SearchConfig, list_agents, load_policy, search
from autoprune.agents.baselines import create_searcher, list_searchers
from autoprune.agents.evaluate import evaluate_methods, markdown_table, write_report
from autoprune.cli import main
from autoprune.envs import ChannelPruningEnv


def in_budget(ratio, target):
    return target - 0.02 <= ratio <= target + 1e-12


@pytest.fixture(scope="module")
def policy_dir(trained_small, tmp_path_factory):
    _, ckpt = trained_small
    out = tmp_path_factory.mktemp("policy")
    search(out, SearchConfig(episodes=12, warmup_episodes=4, checkpoint_every=4), checkpoint=ckpt, progress=False)
    return out, ckpt


@pytest.fixture(scope="module")
def env(trained_small, digits):
    model, _ = trained_small
    return ChannelPruningEnv(model=model, splits=digits)


def test_search_saves_a_policy_that_reloads_with_the_same_strategies(policy_dir):
    out, ckpt = policy_dir
    meta = json.loads((out / "policy.json").read_text())
    for key in ("base_fingerprint", "arch", "groups", "criterion", "target_range", "dataset", "seed", "versions",
                "best_per_target_bin", "episodes", "prior"):
        assert key in meta
    assert meta["episodes"] == 12 and meta["arch"] == "smallcnn" and meta["prior"] == "global"
    rows = list(csv.DictReader(open(out / "progress.csv")))
    assert len(rows) == 12
    first = load_policy(out, checkpoint=ckpt)
    second = load_policy(out, checkpoint=ckpt)
    for t in (0.25, 0.5, 0.77):
        np.testing.assert_array_equal(first.strategy(t), second.strategy(t))


def test_a_policy_saved_before_priors_existed_rolls_out_around_uniform(policy_dir, tmp_path):
    import shutil

    out, ckpt = policy_dir
    old = tmp_path / "old"
    shutil.copytree(out, old)
    meta = json.loads((old / "policy.json").read_text())
    del meta["prior"]
    (old / "policy.json").write_text(json.dumps(meta))
    policy = load_policy(old, checkpoint=ckpt)
    episode = policy._episode()
    episode.reset(0.5)
    assert np.allclose(episode.centre, policy.space.uniform(0.5, meta["min_keep"]))
    assert in_budget(policy.space.flops_ratio(policy.strategy(0.5)), 0.5)


def test_policy_strategies_meet_the_budget_at_random_targets(policy_dir):
    out, ckpt = policy_dir
    policy = load_policy(out, checkpoint=ckpt)
    for t in np.random.default_rng(0).uniform(0.2, 0.9, 5):
        strategy = policy.strategy(float(t))
        assert in_budget(policy.space.flops_ratio(strategy), t)
    model = policy.space.model
    pruned = policy.prune(model, target=0.45)
    assert pruned(torch.zeros(2, 3, 16, 16)).shape == (2, 10)


def test_policy_refuses_a_foreign_model_and_targets_out_of_range(policy_dir):
    out, ckpt = policy_dir
    policy = load_policy(out, checkpoint=ckpt)
    with pytest.raises(AutopruneError, match="weights differ"):
        policy.prune(models.create("smallcnn"), target=0.5)
    with pytest.raises(AutopruneError, match="channel groups"):
        policy.prune(models.create("concatnet"), target=0.5)
    with pytest.raises(AutopruneError, match="outside the range"):
        policy.strategy(0.95)
    assert in_budget(policy.space.flops_ratio(policy.strategy(0.95, allow_extrapolation=True)), 0.95)


def test_resume_continues_where_the_search_stopped(trained_small, tmp_path):
    _, ckpt = trained_small
    config = SearchConfig(episodes=6, warmup_episodes=2, checkpoint_every=3)
    search(tmp_path, config, checkpoint=ckpt, progress=False)
    sigma = json.loads((tmp_path / "resume" / "state.json").read_text())["noise_sigma"]
    assert sigma == pytest.approx([0.5 * 0.99 ** 4])  # decayed once per episode after the 2 warm-up episodes
    with pytest.raises(AutopruneError, match="--resume"):
        search(tmp_path, config, checkpoint=ckpt, progress=False)
    with pytest.raises(AutopruneError, match="other base model or settings"):
        search(tmp_path, SearchConfig(episodes=10, warmup_episodes=2, seed=5), checkpoint=ckpt, progress=False, resume=True)
    config = SearchConfig(episodes=10, warmup_episodes=2, checkpoint_every=3)  # the same search, run longer
    policy = search(tmp_path, config, checkpoint=ckpt, progress=False, resume=True)
    assert policy.meta["episodes"] == 10
    sigma = json.loads((tmp_path / "resume" / "state.json").read_text())["noise_sigma"]
    assert sigma == pytest.approx([0.5 * 0.99 ** 8])  # the decay went on from where it stopped
    assert len(list(csv.DictReader(open(tmp_path / "progress.csv")))) == 10


@pytest.mark.parametrize("agent", list_agents())
def test_every_agent_trains_a_conditional_policy(trained_small, tmp_path, agent):
    _, ckpt = trained_small
    policy = search(tmp_path, SearchConfig(agent=agent, episodes=8, warmup_episodes=2), checkpoint=ckpt, progress=False)
    reloaded = load_policy(tmp_path, checkpoint=ckpt)
    for t in (0.3, 0.6):
        np.testing.assert_array_equal(policy.strategy(t), reloaded.strategy(t))
        assert in_budget(policy.space.flops_ratio(policy.strategy(t)), t)


@pytest.mark.parametrize("name", list_searchers())
def test_every_baseline_meets_the_budget(env, name):
    for target in (0.3, 0.55):
        result = create_searcher(name).search(env, target, episodes=6)
        assert in_budget(env.space.flops_ratio(result.strategy), target), (name, target)
        assert 0 <= result.proxy_accuracy <= 1 and result.seconds >= 0


def test_uniform_baseline_spends_what_coarse_rounding_leaves(trained_small, digits):
    model, _ = trained_small
    coarse = ChannelPruningEnv(model=model, splits=digits, round_to=8)
    target = 0.55
    plain = coarse.space.uniform(target, coarse.min_keep)
    filled = create_searcher("uniform").search(coarse, target).strategy
    assert coarse.space.flops_ratio(plain) < target - 0.02  # one shared ratio in steps of 8 channels falls short
    assert in_budget(coarse.space.flops_ratio(filled), target)
    assert np.all(coarse.space.keep_counts(filled) >= coarse.space.keep_counts(plain))


def test_evaluate_writes_the_report(policy_dir, env, tmp_path):
    out, ckpt = policy_dir
    policy = load_policy(out, checkpoint=ckpt)
    rows = evaluate_methods(env, [0.4, 0.63], policy, ["uniform", "global"], finetune_epochs=1, log=lambda s: None)
    write_report(rows, tmp_path, {"test": True})
    data = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert len(data) == 6
    for row in data:
        for key in ("method", "target", "achieved_flops_ratio", "test_accuracy", "finetuned_test_accuracy",
                    "search_episodes", "search_seconds"):
            assert key in row
        assert in_budget(row["achieved_flops_ratio"], row["target"])
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert (tmp_path / "results.csv").read_text().count("\n") == 7
    # the one search is charged to the first target only; each row carries its own query, nothing of the baselines'
    first, second = (r for r in rows if r["method"] == "policy")
    assert first["search_seconds"] == pytest.approx(policy.meta["search_seconds"] + first["query_seconds"], abs=0.02)
    assert first["search_episodes"] == policy.meta["episodes"] and second["search_episodes"] == 0
    assert 0 <= second["query_seconds"] == second["search_seconds"] < policy.meta["search_seconds"]


def test_report_charges_the_policy_one_search_plus_its_queries():
    def row(method, target, seconds, **extra):
        return {"method": method, "target": target, "achieved_flops_ratio": target, "params": 1, "proxy_accuracy": 0.5,
                "test_accuracy": 50.0, "finetuned_test_accuracy": None, "search_episodes": 1, "search_seconds": seconds, **extra}

    # the search (100 s) is charged to the first target evaluated, which need not be the lowest
    rows = [row("policy", t, s + q, query_seconds=q) for t, s, q in ((0.3, 0, 4), (0.5, 100, 6), (0.6, 0, 50))]
    rows += [row("amc", t, 300) for t in (0.3, 0.5)]
    line = markdown_table(rows).splitlines()[-1]
    assert "amc 600 s over 2 targets" in line and "policy 100 s of search" in line
    assert "+ 10 s of queries" in line and "(0.18 of amc's time)" in line  # (100 + 4 + 6) / 600


def test_evaluate_repeats_the_fine_tune_over_seeds(env, tmp_path):
    one = evaluate_methods(env, [0.5], None, ["uniform"], finetune_epochs=1, seed=3, log=lambda s: None)[0]
    two = evaluate_methods(env, [0.5], None, ["uniform"], finetune_epochs=1, seed=3, finetune_seeds=2, log=lambda s: None)[0]
    runs = two["finetuned_test_accuracies"]
    assert len(runs) == 2 and runs[0] == one["finetuned_test_accuracy"]  # the first seed is the single-seed run
    assert two["finetuned_test_accuracy"] == pytest.approx(np.mean(runs))
    assert two["finetuned_test_accuracy_std"] == pytest.approx(np.std(runs, ddof=1))
    assert one["finetuned_test_accuracy_std"] is None
    write_report([two], tmp_path, {"test": True})
    assert " ± " in (tmp_path / "results.md").read_text()
    with pytest.raises(AutopruneError, match="finetune_seeds"):
        evaluate_methods(env, [0.5], None, ["uniform"], finetune_epochs=1, finetune_seeds=0)


def test_cli_prune_writes_model_and_summary(policy_dir, tmp_path, capsys):
    out, ckpt = policy_dir
    target = tmp_path / "pruned.pt"
    assert main(["prune", "--policy", str(out), "--checkpoint", str(ckpt), "--target", "0.37", "--best-of", "3",
                 "--out", str(target)]) == 0
    summary = json.loads(target.with_suffix(".json").read_text())
    for key in ("target", "achieved_flops_ratio", "params", "proxy_accuracy", "test_accuracy", "strategy"):
        assert key in summary
    assert in_budget(summary["achieved_flops_ratio"], 0.37)
    assert "channels per group" in capsys.readouterr().out
    assert main(["info", str(target)]) == 0
    assert main(["prune", "--policy", str(out), "--checkpoint", str(ckpt), "--target", "0.97", "--out", str(tmp_path / "x.pt")]) == 2
    assert not (tmp_path / "x.pt").exists()
    assert main(["prune", "--policy", str(tmp_path), "--checkpoint", str(ckpt), "--target", "0.5", "--out", str(tmp_path / "x.pt")]) == 2


def test_best_of_k_is_never_worse_than_the_deterministic_rollout(policy_dir, env):
    out, ckpt = policy_dir
    policy = load_policy(out, checkpoint=ckpt)
    for target in (0.35, 0.6):
        deterministic = env.evaluate_strategy(policy.strategy(target))
        strategy, score, scored = policy.best_strategy(target, env.evaluate_strategy, k=4)
        assert scored >= 4 and score >= deterministic
        assert in_budget(policy.space.flops_ratio(strategy), target)


def test_top_level_api_mirrors_the_cli(policy_dir):
    import autoprune

    out, ckpt = policy_dir
    policy = autoprune.load_policy(out, checkpoint=ckpt)
    assert isinstance(policy, autoprune.ConditionalPolicy)
    assert callable(autoprune.search) and autoprune.SearchConfig().agent == "ddpg"


def test_ctrl_c_saves_the_search_and_resume_finishes_it(trained_small, tmp_path, monkeypatch):
    from autoprune.envs.channel_pruning import ChannelPruningEnv as Env

    _, ckpt = trained_small
    original, calls = Env._finish, {"n": 0}

    def interrupt_on_fifth(self):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Env, "_finish", interrupt_on_fifth)
    config = SearchConfig(episodes=8, warmup_episodes=2, checkpoint_every=100)
    with pytest.raises(AutopruneError, match="interrupted after 4 episodes"):
        search(tmp_path, config, checkpoint=ckpt, progress=False)
    assert json.loads((tmp_path / "policy.json").read_text())["episodes"] == 4
    monkeypatch.setattr(Env, "_finish", original)
    policy = search(tmp_path, config, checkpoint=ckpt, progress=False, resume=True)
    assert policy.meta["episodes"] == 8


def test_evaluate_resume_refuses_another_base_model_and_reports_merge(trained_small, tmp_path):
    from autoprune.checkpoint import load_model, save_model
    from experiments.merge_reports import main as merge_main

    _, ckpt = trained_small
    base = tmp_path / "base.pt"
    base.write_bytes(ckpt.read_bytes())
    common = ["evaluate", "--checkpoint", str(base), "--proxy-images", "100"]
    uniform = [*common, "--targets", "0.4,0.6", "--baselines", "uniform", "--out", str(tmp_path / "a")]
    assert main(uniform) == 0
    assert main([*uniform, "--resume"]) == 0  # nothing left to compute: the rows are kept
    assert len(json.loads((tmp_path / "a" / "results.json").read_text())["rows"]) == 2
    assert main([*common, "--targets", "0.5", "--baselines", "global", "--out", str(tmp_path / "b")]) == 0

    out = tmp_path / "merged"
    assert merge_main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["method"], r["target"]) for r in rows] == [("uniform", 0.4), ("global", 0.5), ("uniform", 0.6)]
    assert merge_main([str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(out)]) == 2  # duplicate rows

    model, payload = load_model(base)  # retrained in place: same path, other weights
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)
    save_model(base, model, payload["arch"], payload["num_classes"], payload["meta"])
    assert main([*uniform, "--resume"]) == 2
    assert merge_main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert main([*common, "--targets", "0.5", "--baselines", "global", "--out", str(tmp_path / "c")]) == 0
    assert merge_main([str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(out)]) == 2  # another base model
