import csv
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from helpers import in_budget

import autoprune
from autoprune import AutopruneError, models
from autoprune.agents import SearchConfig, list_agents, load_policy, search
from autoprune.agents.baselines import create_searcher, list_searchers
from autoprune.agents.evaluate import (
    evaluate_methods,
    markdown_table,
    paired_verdicts,
    write_report,
)
from autoprune.cli import main
from autoprune.recovery import FinetuneRecipe
from autoprune.task import PruningSettings, PruningTask

ONE_EPOCH = FinetuneRecipe(epochs=1)


@pytest.fixture(scope="module")
def task(trained_small, digits):
    model, _ = trained_small
    return PruningTask(model, digits)


def test_search_saves_a_policy_that_reloads_with_the_same_strategies(policy_dir):
    out, ckpt = policy_dir
    meta = json.loads((out / "policy.json").read_text())
    for key in ("base_fingerprint", "arch", "groups", "settings", "target_range", "dataset", "seed", "versions",
                "best_per_target_bin", "episodes"):
        assert key in meta
    assert meta["episodes"] == 12 and meta["arch"] == "smallcnn"
    assert PruningSettings.from_dict(meta["settings"]) == PruningSettings()  # the whole record, defaults here
    assert (out / "importance.pt").is_file()
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
    # the layout of policy.json before the settings record and priors existed
    settings = meta.pop("settings")
    meta.update({k: v for k, v in settings.items() if k not in ("prior", "proxy_steps")}, proxy_finetune_steps=0)
    (old / "policy.json").write_text(json.dumps(meta))
    (old / "importance.pt").unlink()
    policy = load_policy(old, checkpoint=ckpt)
    assert policy.settings.prior == "uniform" and policy.settings.fill_budget  # absent prior: uniform
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
    with pytest.raises(AutopruneError, match="other base model or settings.*seed: 0 saved, 5 now"):  # says what differs
        search(tmp_path, SearchConfig(episodes=10, warmup_episodes=2, seed=5), checkpoint=ckpt, progress=False, resume=True)
    state_path = tmp_path / "resume" / "state.json"
    state = json.loads(state_path.read_text())
    del state["meta"]["config"]["settings"]["reconstruct"]  # saved before the setting existed: reads as its default
    state_path.write_text(json.dumps(state))
    config = SearchConfig(episodes=10, warmup_episodes=2, checkpoint_every=3)  # the same search, run longer
    policy = search(tmp_path, config, checkpoint=ckpt, progress=False, resume=True)
    assert policy.meta["episodes"] == 10
    sigma = json.loads((tmp_path / "resume" / "state.json").read_text())["noise_sigma"]
    assert sigma == pytest.approx([0.5 * 0.99 ** 8])  # the decay went on from where it stopped
    assert len(list(csv.DictReader(open(tmp_path / "progress.csv")))) == 10
    files = {f: (tmp_path / f).read_bytes() for f in ("policy.json", "policy.pt", "importance.pt")}
    again = search(tmp_path, config, checkpoint=ckpt, progress=False, resume=True)  # a finished search, resumed
    assert {f: (tmp_path / f).read_bytes() for f in files} == files
    np.testing.assert_array_equal(again.strategy(0.5), policy.strategy(0.5))


@pytest.mark.parametrize("agent", list_agents())
def test_every_agent_trains_a_conditional_policy(trained_small, tmp_path, agent):
    _, ckpt = trained_small
    policy = search(tmp_path, SearchConfig(agent=agent, episodes=8, warmup_episodes=2), checkpoint=ckpt, progress=False)
    reloaded = load_policy(tmp_path, checkpoint=ckpt)
    for t in (0.3, 0.6):
        np.testing.assert_array_equal(policy.strategy(t), reloaded.strategy(t))
        assert in_budget(policy.space.flops_ratio(policy.strategy(t)), t)


@pytest.mark.parametrize("name", list_searchers())
def test_every_baseline_meets_the_budget(task, name):
    for target in (0.3, 0.55):
        result = create_searcher(name).search(task, target, episodes=6)
        assert in_budget(task.space.flops_ratio(result.strategy), target), (name, target)
        assert 0 <= result.proxy_accuracy <= 1 and result.seconds >= 0


def test_uniform_baseline_spends_what_coarse_rounding_leaves(trained_small, digits):
    model, _ = trained_small
    coarse = PruningTask(model, digits, PruningSettings(round_to=8))
    target = 0.55
    plain = coarse.space.uniform(target, coarse.settings.min_keep)
    filled = create_searcher("uniform").search(coarse, target).strategy
    assert coarse.space.flops_ratio(plain) < target - 0.02  # one shared ratio in steps of 8 channels falls short
    assert in_budget(coarse.space.flops_ratio(filled), target)
    assert np.all(coarse.space.keep_counts(filled) >= coarse.space.keep_counts(plain))


def test_evaluate_writes_the_report(policy_dir, task, tmp_path):
    out, ckpt = policy_dir
    policy = load_policy(out, checkpoint=ckpt)
    rows = evaluate_methods(task, [0.4, 0.63], policy, ["uniform", "global"], recipe=ONE_EPOCH, log=lambda s: None)
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


def test_evaluate_interrupted_during_fine_tunes_resumes_without_a_search_or_fine_tune_twice(policy_dir, task, monkeypatch):
    import autoprune.agents.evaluate as ev

    out, ckpt = policy_dir
    policy = load_policy(out, checkpoint=ckpt)
    real_tune, real_create = ev.finetuned_test_accuracy, ev.create_searcher
    calls = {"tune": 0, "search": 0, "stop_at": None}

    def tune(job, **kwargs):
        calls["tune"] += 1
        if calls["tune"] == calls["stop_at"]:
            raise KeyboardInterrupt
        return real_tune(job, **kwargs)

    def create(name, work_dir=None):
        searcher = real_create(name, work_dir)
        search_once = searcher.search

        def counted(*args, **kwargs):
            calls["search"] += 1
            return search_once(*args, **kwargs)

        searcher.search = counted
        return searcher

    monkeypatch.setattr(ev, "finetuned_test_accuracy", tune)
    monkeypatch.setattr(ev, "create_searcher", create)
    saved = {}

    def save(rows, started):  # as the CLI does: through JSON
        saved.update(json.loads(json.dumps({"rows": rows, "started": started})))

    run = dict(targets=[0.4, 0.63], policy=policy, baselines=["uniform", "random"], baseline_episodes=3,
               recipe=ONE_EPOCH, finetune_seeds=2, log=lambda s: None)
    reference = evaluate_methods(task, **run)
    assert calls == {"tune": 12, "search": 4, "stop_at": None}
    calls.update(tune=0, search=0, stop_at=9)  # the 3rd of target 0.63's 6 fine-tunes is interrupted
    with pytest.raises(KeyboardInterrupt):
        evaluate_methods(task, **run, on_save=save)
    assert len(saved["rows"]) == 3 and len(saved["started"]) == 3
    assert sum(len(r["seed_accuracies"]) for r in saved["started"]) == 2
    calls.update(tune=0, search=0, stop_at=None)
    interrupted = saved.copy()
    logged: list[str] = []
    rows = evaluate_methods(task, **(run | {"log": logged.append}), done=saved["rows"], started=saved["started"],
                            on_save=save)
    assert calls["tune"] == 4 and calls["search"] == 0  # the rest only: no baseline searched again
    progress = [line for line in logged if "fine-tunes at this target" in line]
    assert len(progress) == 4 and "(3 of 6 fine-tunes at this target, " in progress[0]  # counting the 2 resumed
    assert progress[-1].endswith("(6 of 6 fine-tunes at this target, 0:00:00 left at it)")
    assert saved["started"] == [] and len(saved["rows"]) == 6
    same = ("method", "target", "strategy", "kept_channels", "search_episodes", "test_accuracy", "finetuned_test_accuracies")
    assert [{k: r[k] for k in same} for r in rows] == [{k: r[k] for k in same} for r in reference]

    def stop_after_searches(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "_finetune_all", stop_after_searches)  # stopped before its first fine-tune
    calls.update(tune=0, search=0)
    with pytest.raises(KeyboardInterrupt):
        evaluate_methods(task, **run, done=interrupted["rows"], on_save=save)
    assert calls["search"] == 2 and [r["seed_accuracies"] for r in saved["started"]] == [{}, {}, {}]


def test_report_charges_the_policy_one_search_plus_its_queries():
    def row(method, target, seconds, **extra):
        return {"method": method, "target": target, "achieved_flops_ratio": target, "params": 1, "proxy_accuracy": 0.5,
                "test_accuracy": 50.0, "finetuned_test_accuracy": None, "search_episodes": 1, "search_seconds": seconds, **extra}

    # the search (100 s) is charged to the first target evaluated, which need not be the lowest
    rows = [row("policy", t, s + q, query_seconds=q) for t, s, q in ((0.3, 0, 4), (0.5, 100, 6), (0.6, 0, 50))]
    rows += [row("amc", t, 300) for t in (0.3, 0.5)] + [row("tp-global", t, 2) for t in (0.3, 0.5)]
    line = markdown_table(rows).splitlines()[-1]
    assert "amc 600 s over 2 targets" in line and "policy 100 s of search" in line
    assert "tp-global" not in markdown_table(rows).split("every other searching method")[-1]  # no proxy search
    assert "+ 10 s of queries" in line and "(0.18 of amc's time)" in line  # (100 + 4 + 6) / 600


def test_evaluate_repeats_the_fine_tune_over_seeds(task, tmp_path):
    one = evaluate_methods(task, [0.5], None, ["uniform"], recipe=ONE_EPOCH, seed=3, log=lambda s: None)[0]
    two = evaluate_methods(task, [0.5], None, ["uniform"], recipe=ONE_EPOCH, seed=3, finetune_seeds=2, log=lambda s: None)[0]
    runs = two["finetuned_test_accuracies"]
    assert len(runs) == 2 and runs[0] == one["finetuned_test_accuracy"]  # the first seed is the single-seed run
    assert two["finetuned_test_accuracy"] == pytest.approx(np.mean(runs))
    assert two["finetuned_test_accuracy_std"] == pytest.approx(np.std(runs, ddof=1))
    assert one["finetuned_test_accuracy_std"] is None
    write_report([two], tmp_path, {"test": True})
    assert " ± " in (tmp_path / "results.md").read_text()
    with warnings.catch_warnings():  # a report saved before its first finished row: no warning, a figure all the same
        warnings.simplefilter("error")
        write_report([], tmp_path / "empty", {"test": True}, started=[two])
    assert (tmp_path / "empty" / "pareto.png").is_file()
    with pytest.raises(AutopruneError, match="finetune_seeds"):
        evaluate_methods(task, [0.5], None, ["uniform"], recipe=ONE_EPOCH, finetune_seeds=0)


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


def test_best_of_k_picks_the_best_candidate_under_any_score(policy_dir):
    out, ckpt = policy_dir
    policy = load_policy(out, checkpoint=ckpt)
    space = policy.space
    for target in (0.35, 0.6):
        rollouts = policy.rollouts(target, 8)
        others = [r for r in rollouts[1:] if not np.array_equal(r, rollouts[0])]
        assert others  # noisy rollouts explore other strategies
        # a score that prefers one noisy rollout: best-of-K must return it, not the deterministic one
        wanted = others[-1]
        strategy, score, scored = policy.best_strategy(target, lambda s, wanted=wanted: -np.abs(s - wanted).sum(), k=8)
        np.testing.assert_array_equal(strategy, wanted)
        found = [b for b in policy.meta["best_per_target_bin"].values()
                 if target - 0.02 <= space.flops_ratio(np.asarray(b["strategy"])) <= target + 1e-12]
        assert scored == 8 + len(found) and score == 0
        assert in_budget(space.flops_ratio(strategy), target)


def test_top_level_api_searches_and_queries(trained_small, tmp_path):
    import autoprune

    model, ckpt = trained_small
    searched = autoprune.search(tmp_path, autoprune.SearchConfig(episodes=3, warmup_episodes=1), checkpoint=ckpt,
                                progress=False)
    policy = autoprune.load_policy(tmp_path, checkpoint=ckpt)
    assert isinstance(policy, autoprune.ConditionalPolicy) and policy.meta["episodes"] == 3
    np.testing.assert_array_equal(searched.strategy(0.5), policy.strategy(0.5))
    pruned = policy.prune(model, target=0.5)
    assert autoprune.count_flops(pruned, torch.zeros(1, 3, 16, 16)) <= 0.5 * autoprune.count_flops(model, torch.zeros(1, 3, 16, 16))


def interrupt_episode(monkeypatch, n):
    """Ctrl-C as episode ``n`` of any search ends; returns what puts the environment back."""
    from autoprune.envs.channel_pruning import ChannelPruningEnv as Env

    original, calls = Env._finish, {"n": 0}

    def interrupting(self):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Env, "_finish", interrupting)
    return lambda: monkeypatch.setattr(Env, "_finish", original)


def test_ctrl_c_saves_the_search_and_resume_finishes_it(trained_small, tmp_path, monkeypatch):
    _, ckpt = trained_small
    restore = interrupt_episode(monkeypatch, 5)
    config = SearchConfig(episodes=8, warmup_episodes=2, checkpoint_every=100)
    with pytest.raises(AutopruneError, match="interrupted after 4 episodes"):
        search(tmp_path, config, checkpoint=ckpt, progress=False)
    assert json.loads((tmp_path / "policy.json").read_text())["episodes"] == 4
    restore()
    policy = search(tmp_path, config, checkpoint=ckpt, progress=False, resume=True)
    assert policy.meta["episodes"] == 8


def test_evaluate_resume_refuses_another_base_model_and_reports_merge(trained_small, tmp_path, capsys):
    from autoprune.checkpoint import load_model, save_model
    from experiments.merge_reports import main as merge_main

    _, ckpt = trained_small
    base = tmp_path / "base.pt"
    base.write_bytes(ckpt.read_bytes())
    common = ["evaluate", "--checkpoint", str(base), "--proxy-images", "100"]
    uniform = [*common, "--targets", "0.4,0.6", "--baselines", "uniform", "--out", str(tmp_path / "a")]
    assert main(uniform) == 0
    written = {f.name: f.read_bytes() for f in (tmp_path / "a").iterdir()}
    assert main([*uniform, "--resume"]) == 0  # nothing left to compute: the report stays byte for byte
    assert {f.name: f.read_bytes() for f in (tmp_path / "a").iterdir()} == written
    assert len(json.loads((tmp_path / "a" / "results.json").read_text())["rows"]) == 2
    report = json.loads((tmp_path / "a" / "results.json").read_text())
    del report["config"]["settings"]["reconstruct"]  # written before the setting existed
    (tmp_path / "a" / "results.json").write_text(json.dumps(report))
    assert main([*uniform, "--resume"]) == 0  # it reads as the default
    assert main([*uniform, "--resume", "--proxy-measure", "kl", "--lr", "0.05"]) == 0  # the defaults, typed out
    assert main([*uniform, "--resume", "--proxy", "bn"]) == 2  # other settings are refused, naming the difference once
    err = capsys.readouterr().err
    assert "settings.proxy: 'recon' saved, 'bn' now" in err and err.count("'bn' now") == 1
    assert main([*common, "--targets", "0.5", "--baselines", "global", "--out", str(tmp_path / "b")]) == 0

    out = tmp_path / "merged"
    assert merge_main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    merged = json.loads((out / "results.json").read_text())
    rows = merged["rows"]
    assert [(r["method"], r["target"]) for r in rows] == [("uniform", 0.4), ("global", 0.5), ("uniform", 0.6)]
    base_record = json.loads((tmp_path / "a" / "results.json").read_text())["base"]
    assert merged["base"] == base_record and base_record["arch"]  # autoprune report shows the base beside the rows
    assert merge_main([str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(out)]) == 2  # duplicate rows

    model, payload = load_model(base)  # retrained in place: same path, other weights
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)
    save_model(base, model, payload["arch"], payload["num_classes"], payload["meta"])
    assert main([*uniform, "--resume"]) == 2
    assert merge_main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert main([*common, "--targets", "0.5", "--baselines", "global", "--out", str(tmp_path / "c")]) == 0
    assert merge_main([str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(out)]) == 2  # another base model


def test_committed_resnet20_policies_give_the_recorded_strategies():
    """A regression guard: the committed policies' rollouts, recorded before the PruningTask redesign."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    recorded = json.loads((root / "tests" / "data" / "resnet20_policy_strategies.json").read_text())
    model = autoprune.load_pruned(root / recorded["checkpoint"])
    for directory, strategies in recorded["policies"].items():
        policy = load_policy(root / directory, model=model)
        for target, counts in strategies.items():
            assert policy.space.keep_counts(policy.strategy(float(target))).tolist() == counts, (directory, target)


@pytest.mark.parametrize("criterion", ["taylor", "gradient", "entropy"])
def test_a_policy_of_a_data_dependent_criterion_can_be_queried(trained_small, tmp_path, criterion):
    _, ckpt = trained_small
    out = tmp_path / "policy"
    assert main(["search", "--checkpoint", str(ckpt), "--criterion", criterion, "--episodes", "3", "--warmup", "1",
                 "--out", str(out), "--no-progress"]) == 0
    pruned = tmp_path / "p.pt"
    assert main(["prune", "--policy", str(out), "--checkpoint", str(ckpt), "--target", "0.5", "--out", str(pruned)]) == 0
    summary = json.loads(pruned.with_suffix(".json").read_text())
    assert summary["settings"]["criterion"] == criterion and in_budget(summary["achieved_flops_ratio"], 0.5)
    # the query ranks channels by the scores the search used: the same model from the library, without data
    policy = load_policy(out, checkpoint=ckpt)
    assert policy.space.keep_counts(policy.strategy(0.5)).tolist() == [c for c, _ in summary["channels"].values()]


@pytest.mark.parametrize("method", list_searchers())
def test_cli_prunes_with_any_baseline_method(trained_small, tmp_path, method):
    _, ckpt = trained_small
    out = tmp_path / "m.pt"
    assert main(["prune", "--method", method, "--checkpoint", str(ckpt), "--target", "0.45", "--episodes", "4",
                 "--out", str(out)]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["method"] == method and in_budget(summary["achieved_flops_ratio"], 0.45)
    assert autoprune.load_pruned(out).autoprune_meta["method"] == method


def test_cli_prune_refuses_a_policy_and_a_method_together(policy_dir, tmp_path):
    out, ckpt = policy_dir
    result = subprocess.run([sys.executable, "-m", "autoprune.cli", "prune", "--policy", str(out), "--method", "uniform",
                             "--checkpoint", str(ckpt), "--target", "0.5", "--out", str(tmp_path / "x.pt")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "not allowed with argument" in result.stderr
    assert not (tmp_path / "x.pt").exists()


def test_report_joins_architectures_into_one_table_and_figure(tmp_path):
    def row(method, target, acc, std):
        return {"method": method, "target": target, "achieved_flops_ratio": target - 0.003, "params": 1, "proxy_accuracy": 0.5,
                "test_accuracy": 40.0, "finetuned_test_accuracy": acc, "finetuned_test_accuracy_std": std,
                "finetuned_test_accuracies": [acc - std, acc + std],
                "search_episodes": 0, "search_seconds": 0.0, "strategy": [1.0], "kept_channels": [1]}

    for arch, shift in (("resnet56", 0.0), ("vgg16_bn", 2.0)):
        rows = [row(m, t, 80 + 10 * t + shift + bonus, 0.2) for t in (0.3, 0.5) for m, bonus in (("policy", 0.5), ("uniform", 0))]
        write_report(rows, tmp_path / f"{arch}-cifar10", {"test": True}, base={"arch": arch, "test_accuracy": 93.0})
    out = tmp_path / "cross"
    assert main(["report", str(tmp_path / "resnet56-cifar10"), str(tmp_path / "vgg16_bn-cifar10"), "--out", str(out)]) == 0
    table = (out / "cross_arch.md").read_text()
    assert "| resnet56 | 93.00 | 0.30 | **83.50 ± 0.20** | 83.00 ± 0.20 |" in table
    assert "| vgg16_bn | | mean over targets | 86.50 | 86.00 |" in table
    # the same seeds shift both methods alike: the +0.5 is beyond any noise at both targets
    assert ("- resnet56, policy − uniform: +0.50 ± 0.00 on average over 2 target(s) (ahead); paired mean ≥ 0 at 2, "
            "ahead at 2") in table
    assert (out / "cross_arch.png").stat().st_size > 1000
    assert len(json.loads((out / "cross_arch.json").read_text())["reports"]) == 2
    assert main(["report", str(tmp_path / "resnet56-cifar10"), str(tmp_path / "missing"), "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_a_transferable_policy_prunes_another_architecture_only_with_transfer(trained_small, digits, tmp_path):
    from autoprune.checkpoint import save_model

    _, ckpt = trained_small
    policy_dir = tmp_path / "policy"
    assert main(["search", "--checkpoint", str(ckpt), "--observation", "transferable", "--episodes", "4", "--warmup", "1",
                 "--out", str(policy_dir), "--no-progress"]) == 0
    torch.manual_seed(1)
    other = tmp_path / "concat.pt"  # another architecture: concat groups, other depth and widths
    save_model(other, models.create("concatnet"), "concatnet", 10, {"kind": "base", "dataset": "digits",
               "val_size": digits.val_size, "input_shape": list(digits.input_shape)})
    common = ["--policy", str(policy_dir), "--checkpoint", str(other)]
    refused = subprocess.run([sys.executable, "-m", "autoprune.cli", "prune", *common, "--target", "0.5",
                              "--out", str(tmp_path / "x.pt")], capture_output=True, text=True)
    assert refused.returncode == 2 and "--transfer" in refused.stderr and not (tmp_path / "x.pt").exists()
    for target in ("0.35", "0.6"):
        out = tmp_path / f"p{target}.pt"
        assert main(["prune", *common, "--target", target, "--transfer", "--out", str(out)]) == 0
        summary = json.loads(out.with_suffix(".json").read_text())
        assert summary["transferred_from"]["arch"] == "smallcnn"
        assert in_budget(summary["achieved_flops_ratio"], float(target))
    report = tmp_path / "report"
    assert main(["evaluate", *common, "--transfer", "--targets", "0.4,0.6", "--baselines", "uniform",
                 "--out", str(report)]) == 0
    rows = json.loads((report / "results.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"policy", "uniform"} and all(in_budget(r["achieved_flops_ratio"], r["target"]) for r in rows)


def test_every_baseline_is_listed_with_a_summary(capsys):
    from autoprune.agents.baselines import SEARCHERS
    from autoprune.cli import main

    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    for name in list_searchers():
        assert SEARCHERS.get(name).summary and f"{name} " in listed


def test_the_mean_over_targets_pools_their_seeds_into_one_test():
    from autoprune.agents.report import PairedDifference, count_verdicts, mean_over_targets

    # +0.30 ± 0.12 with 3 seeds at each of four targets: none resolved alone (t(0.975, 2) = 4.3), the mean is
    per_target = {t: PairedDifference(0.3, 0.12, 3) for t in (0.3, 0.42, 0.5, 0.63)}
    assert {d.verdict for d in per_target.values()} == {"within noise"}
    overall = mean_over_targets(per_target)
    assert overall is not None and overall.mean == pytest.approx(0.3) and overall.seeds == 12
    assert overall.standard_error == pytest.approx(0.06) and overall.dof == pytest.approx(8.0)  # equal errors: 4 x 2
    assert overall.verdict == "ahead" and overall.threshold == pytest.approx(2.306 * 0.06, rel=1e-3)
    counted = count_verdicts(per_target)
    assert counted["ahead"] == 0 and counted["mean_difference_verdict"] == "ahead"
    assert counted["mean_difference_standard_error"] == pytest.approx(0.06)
    # unequal errors: fewer degrees of freedom than the seeds (Welch-Satterthwaite), a wider threshold
    uneven = mean_over_targets({0.3: PairedDifference(0.3, 0.02, 3), 0.5: PairedDifference(0.3, 0.3, 3)})
    assert uneven is not None and 2.0 <= uneven.dof < 4.0
    # a target with one seed has no error, so neither has the mean; no target, no mean
    single = mean_over_targets({0.3: PairedDifference(0.3, 0.12, 3), 0.5: PairedDifference(1.0, None, 1)})
    assert single is not None and single.standard_error is None and single.verdict == "one seed"
    assert mean_over_targets({}) is None and count_verdicts({})["mean_difference_verdict"] is None


def test_paired_verdicts_resolve_a_difference_only_beyond_two_standard_errors():
    from autoprune.agents.report import mean_and_standard_error

    assert mean_and_standard_error([1.0, 3.0]) == (2.0, 1.0) and mean_and_standard_error([0.5]) == (0.5, None)

    def row(method, target, runs):
        return {"method": method, "target": target, "finetuned_test_accuracies": runs}

    rows = [row("policy", 0.3, [80.0, 80.2, 80.4]), row("uniform", 0.3, [79.0, 79.3, 79.4]),  # +0.97 ± 0.03
            row("policy", 0.5, [70.0, 71.0]), row("uniform", 0.5, [70.5, 70.3]),  # +0.10 ± 0.60
            row("policy", 0.7, [60.0]), row("uniform", 0.7, [59.0])]  # one seed: no verdict
    rows += [row("policy", 0.4, [80.1, 80.5, 80.3]), row("uniform", 0.4, [80.0, 80.0, 80.0])]  # +0.30 ± 0.12
    lines = paired_verdicts(rows, "policy", "uniform")
    assert len(lines) == 3
    assert lines[0].startswith("target 0.30: policy - uniform = +0.97 ± 0.03") and "policy ahead, resolved by 3" in lines[0]
    # beyond two standard errors, but inside t(0.975, 2) = 4.3 of them: three seeds do not resolve it
    assert lines[1].startswith("target 0.40: policy - uniform = +0.30 ± 0.12") and "not resolved" in lines[1]
    assert lines[2].startswith("target 0.50: policy - uniform = +0.10 ± 0.60") and "not resolved" in lines[2]


def test_a_refused_resume_names_what_differs():
    from autoprune.utils import describe_differences

    saved = {"seed": 0, "settings": {"proxy": "bn", "min_keep": 0.1}, "episodes": 10}
    assert describe_differences(saved, {**saved, "settings": {"proxy": "recon", "min_keep": 0.1}}) == (
        "settings.proxy: 'bn' saved, 'recon' now")
    assert describe_differences(saved, {"seed": 1}, limit=2) == "episodes: 10 saved, None now; seed: 0 saved, 1 now; and 2 more"


def test_an_interrupted_amc_search_continues_from_its_work_dir(task, tmp_path, monkeypatch):
    from autoprune.agents.baselines import AMC

    monkeypatch.setattr(AMC, "CHECKPOINT_EVERY", 3)
    restore = interrupt_episode(monkeypatch, 5)
    work = tmp_path / "searches"
    with pytest.raises(AutopruneError, match="interrupted after 4 episodes"):
        create_searcher("amc", work_dir=work).search(task, 0.5, episodes=8, seed=3)
    restore()
    kept = work / "amc-0.5"
    assert json.loads((kept / "policy.json").read_text())["episodes"] == 4
    with open(kept / "progress.csv", "a", newline="") as fh:  # killed after its last save: an episode logged, not saved
        fh.write("5,0.5,0.5,0.9,0.9,1.0,x\r\n")
    replay = kept / "resume" / "replay.pkl"
    assert replay.stat().st_size < 200_000  # the filled part only, not the 200,000 preallocated transitions
    state = json.loads((kept / "resume" / "state.json").read_text())
    state["monitor"]["seconds"] += 1000.0  # as if the first 4 episodes had run for 1000 s more
    (kept / "resume" / "state.json").write_text(json.dumps(state))
    result = create_searcher("amc", work_dir=work).search(task, 0.5, episodes=8, seed=3)
    assert result.seconds > 1000  # the search's cost counts the sessions before this one
    assert in_budget(task.space.flops_ratio(result.strategy), 0.5)
    assert json.loads((kept / "policy.json").read_text())["episodes"] == 8
    lines = (kept / "progress.csv").read_bytes().splitlines(keepends=True)
    assert len(lines) == 1 + 8  # continued, not started again
    assert all(line.endswith(b"\r\n") for line in lines)  # the csv module's line ends, the kept rows' too
    with pytest.raises(AutopruneError, match="use the same ones to resume.*min_keep"):  # other settings are refused
        create_searcher("amc", work_dir=work).search(task.derive(min_keep=0.2), 0.5, episodes=8, seed=3)
    # evaluate gives a folder to the resumable searchers only
    evaluate_methods(task, [0.4], None, ["amc", "uniform"], baseline_episodes=3, work_dir=tmp_path / "eval")
    assert (tmp_path / "eval" / "amc" / "amc-0.4" / "policy.json").exists()
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["amc"]


def test_the_replay_buffer_saves_its_filled_part_and_loads_back_whole():
    import pickle

    from gymnasium import spaces

    from autoprune.agents.common import EpisodeRewardReplayBuffer

    buffer = EpisodeRewardReplayBuffer(1000, spaces.Box(-1, 1, (3,)), spaces.Box(-1, 1, (1,)), device="cpu")
    rng = np.random.default_rng(0)
    for step in range(5):
        buffer.add(rng.random((1, 3)), rng.random((1, 3)), rng.random((1, 1)), np.array([0.5]),
                   np.array([step == 4]), [{}])
    saved = pickle.dumps(buffer)
    assert len(saved) < buffer.observations.nbytes  # the 995 empty transitions are not written
    loaded = pickle.loads(saved)
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        assert np.array_equal(getattr(loaded, name), getattr(buffer, name)), name
    assert (loaded.pos, loaded.full, loaded.buffer_size) == (5, False, 1000)
