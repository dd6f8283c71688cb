"""The experiment scripts: their configs parse from the command line, and the pruning shapes they share."""

import dataclasses
import importlib
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro

from autoprune import models
from autoprune.pruning import PruningSpace
from experiments.common import SHAPES, shaped_strategy

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.py") if p.stem != "__init__")
WITHOUT_CONFIG = {"common", "merge_reports"}  # shared code; merge_reports takes report folders as arguments
CONFIGURED = [s for s in SCRIPTS if s not in WITHOUT_CONFIG]


def config_of(script: str) -> type:
    module = importlib.import_module(f"experiments.{script}")
    cls = getattr(module, "Config", None)
    assert cls is not None and dataclasses.is_dataclass(cls), f"experiments/{script}.py has no Config dataclass"
    return cls


def flag(field: dataclasses.Field) -> str:
    return "--" + field.name.replace("_", "-")


def test_every_script_but_the_shared_ones_has_a_config():
    assert set(WITHOUT_CONFIG) <= set(SCRIPTS)
    assert CONFIGURED


@pytest.mark.parametrize("script", CONFIGURED)
def test_config_defaults_and_overrides_parse(script):
    cls = config_of(script)
    assert tyro.cli(cls, args=[]) == cls()
    names = {f.name for f in dataclasses.fields(cls)}
    if "seed" in names:
        assert tyro.cli(cls, args=["--seed", "3"]).seed == 3
    defaults = cls()
    for f in dataclasses.fields(cls):  # every field takes a value other than its default
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            args, value = [flag(f) if not default else "--no-" + flag(f)[2:]], not default
        elif isinstance(default, (int, float)):
            value = default + (1 if isinstance(default, int) else 0.5)
            args = [flag(f), str(value)]
        elif isinstance(default, str):
            value = default + "x"
            args = [flag(f), value]
        elif isinstance(default, list) and "float" in str(f.type):
            value = [0.3, 0.5]
            args = [flag(f), "0.3", "0.5"]
        elif isinstance(default, list) and all(isinstance(v, str) for v in default):
            value = ["a", "b"]
            args = [flag(f), *value]
        else:
            continue
        assert getattr(tyro.cli(cls, args=args), f.name) == value, (script, args)


def quoted_commands() -> list[tuple[str, str, list[str]]]:
    """(where, script, arguments) of every ``python -m experiments.<script> ...`` the docs, the reports'
    recorded commands and the scripts quote."""
    files = [ROOT / "README.md", ROOT / "docs" / "RESULTS.md", *sorted((ROOT / "docs" / "results").glob("*.md")),
             *sorted((ROOT / "experiments").glob("*.py")), *sorted((ROOT / "experiments").glob("*.sh"))]
    found = []
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text().replace("\\\n", " ")
        for m in re.finditer(r"python -m experiments\.(\w+)([^\n`]*)", text):
            script, rest = m.group(1), m.group(2).replace("-->", "")
            if script in CONFIGURED:
                found.append((path.name, script, shlex.split(rest, comments=True)))
    return found


def test_quoted_commands_parse():
    commands = quoted_commands()
    assert commands
    for where, script, args in commands:
        try:
            tyro.cli(config_of(script), args=args)
        except SystemExit as exc:
            raise AssertionError(f"{where}: python -m experiments.{script} {shlex.join(args)} does not parse") from exc


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    return PruningSpace(models.create("smallcnn").eval(), torch.zeros(1, 3, 8, 8))  # sides 8, 8, 4, 4


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target", [0.2, 0.5, 0.8])
def test_shaped_strategy_is_within_the_target(space, shape, target):
    strategy = shaped_strategy(space, shape, target)
    ratio = space.flops_ratio(strategy)
    assert target - 0.02 <= ratio <= target  # the fill spends the budget left over
    if shape == "uniform":
        unfilled = shaped_strategy(space, shape, target, fill=False)
        assert space.flops_ratio(unfilled) <= target
        assert np.all(space.keep_counts(strategy) >= space.keep_counts(unfilled))


def test_early_prunes_the_large_feature_maps_harder_than_late(space):
    early = space.keep_counts(shaped_strategy(space, "early", 0.4)) / space.channels
    late = space.keep_counts(shaped_strategy(space, "late", 0.4)) / space.channels
    assert early[0] < late[0] and early[-1] > late[-1]


def test_shaped_strategy_refuses_unknown_shapes(space):
    with pytest.raises(ValueError, match="unknown shape"):
        shaped_strategy(space, "diagonal", 0.5)
    with pytest.raises(ValueError, match="budget fill"):
        shaped_strategy(space, "early", 0.5, fill=False)


# ------------------------------------------------------------------ fidelity_data and score_proxies (issue #13)
@pytest.fixture
def one_thread():
    """The scripts set torch's threads; put them back for the tests that follow."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_fidelity_summary_reports_headroom_over_global_and_uniform():
    from experiments.fidelity_data import summary

    def row(source, accuracies):
        return {"target": 0.5, "source": source, "finetuned": dict(zip("01", accuracies)),
                "finetuned_test_accuracy": float(np.mean(accuracies))}

    results = {"arch": "small", "checkpoint": "c.pt", "seeds": [0, 1], "targets": [0.5, 0.7],
               "finetune": {"recipe": {"epochs": 1}},
               "strategies": [row("global", [80.0, 81.0]), row("uniform", [79.0, 79.0]), row("ga", [82.0, 81.0]),
                              row("policy", [80.0]), {"target": 0.7, "source": "global", "finetuned": {},
                                                      "finetuned_test_accuracy": None}]}
    lines = summary(results).splitlines()
    assert "| +1.00 / +2.50 |" in lines[-2]  # best 81.5 over global's 80.5 and uniform's 79.0
    assert "| – / – |" in lines[-1]  # nothing fine-tuned at 0.7 yet


def test_fidelity_data_resumes_and_score_proxies_reports_on_it(trained_small, tmp_path, monkeypatch, one_thread):
    import json

    from experiments import fidelity_data, score_proxies

    _, checkpoint = trained_small
    out = tmp_path / "fidelity.json"
    cfg = fidelity_data.Config(checkpoint=str(checkpoint), data_dir="", policy="", sources=["global", "uniform", "ga"],
                               search_episodes=16, per_target=3, proxy_images=100, finetune_images=200, threads=1,
                               out=str(out), limit=2)
    calls = []
    real = fidelity_data.finetuned_test_accuracy
    monkeypatch.setattr(fidelity_data, "finetuned_test_accuracy",
                        lambda job, *args, **kwargs: calls.append(job[1]) or real(job, *args, **kwargs))
    fidelity_data.main(cfg)
    first = json.loads(out.read_text())["results"]
    rows = first["strategies"]
    assert len(calls) == 4 and out.with_suffix(".md").is_file()  # 2 strategies x seeds 0 and 1
    assert len(rows) >= 6 and {r["target"] for r in rows} == {0.3, 0.5, 0.7}
    for target in (0.3, 0.5, 0.7):
        counts = [tuple(r["kept_channels"]) for r in rows if r["target"] == target]
        assert len(counts) == len(set(counts))  # deduplicated by kept-channel counts
    for r in rows:
        assert {"id", "target", "source", "keep_ratios", "kept_channels", "flops_ratio", "test_accuracy", "finetuned",
                "finetuned_test_accuracy"} <= set(r)
        assert r["target"] - 0.02 - 1e-9 <= r["flops_ratio"] <= r["target"] + 1e-12
    done = [r for r in rows if r["finetuned"]]
    assert [r["target"] for r in done] == [0.3, 0.5]  # the targets in turn
    for r in done:
        assert set(r["finetuned"]) == {"0", "1"} and 0 <= r["test_accuracy"] <= 100
        assert r["finetuned_test_accuracy"] == pytest.approx(np.mean(list(r["finetuned"].values())))

    partial = score_proxies.Config(data=str(out), proxies=["bn"], proxy_images=100, data_dir="", threads=1,
                                   out_dir=str(tmp_path), name="partial")
    score_proxies.main(partial)
    assert json.loads((tmp_path / "partial.json").read_text())["results"]["strategies_used"] == 2

    calls.clear()
    resumed = dataclasses.replace(cfg, limit=0, resume=True, sources=["uniform"], per_target=1)  # generation is not redone
    fidelity_data.main(resumed)
    after = json.loads(out.read_text())["results"]["strategies"]
    assert len(calls) == 2 * (len(rows) - 2)
    assert [(r["id"], r["kept_channels"]) for r in after] == [(r["id"], r["kept_channels"]) for r in rows]
    assert [r["finetuned"] for r in after if r["id"] in {d["id"] for d in done}] == [r["finetuned"] for r in done]
    assert all(set(r["finetuned"]) == {"0", "1"} for r in after)
    calls.clear()
    fidelity_data.main(resumed)
    assert calls == []
    with pytest.raises(SystemExit, match="--resume"):
        fidelity_data.main(dataclasses.replace(cfg, resume=False))

    scored = score_proxies.Config(data=str(out), proxies=["bn", "recon-bn", "distill:steps=5,lr=0.02"],
                                  proxy_images=100, data_dir="", threads=1, out_dir=str(tmp_path), name="scores")
    score_proxies.main(scored)
    report = json.loads((tmp_path / "scores.json").read_text())["results"]
    assert report["strategies_used"] == len(rows) and (tmp_path / "scores.md").is_file()
    assert [p["proxy"] for p in report["proxies"]] == scored.proxies
    assert report["proxies"][0]["relative_cost"] == pytest.approx(1.0)
    assert report["proxies"][2]["steps"] == 5 and report["proxies"][1]["reconstruct_images"] > 0
    rhos = [t["spearman"] for p in report["proxies"] for t in p["per_target"].values()]
    assert any(rho is not None for rho in rhos)
    assert all(-1 <= rho <= 1 for rho in rhos if rho is not None)
    for p in report["proxies"]:
        assert all(0 <= t["picks_best"] <= 1 and t["gap"] >= 0 for t in p["per_target"].values())
        assert all(0 <= report["scores"][r["id"]][p["proxy"]] <= 1 for r in rows)

    # what the proxies cost, in turn on the same strategies
    from experiments import proxy_cost

    proxy_cost.main(proxy_cost.Config(data=str(out), proxies=["bn", "recon:measure=kl"], per_target=1, proxy_images=100,
                                      data_dir="", out_dir=str(tmp_path), name="cost"))
    cost = json.loads((tmp_path / "cost.json").read_text())["results"]
    assert cost["strategies"] == 3 and [p["proxy"] for p in cost["proxies"]] == ["bn", "recon:measure=kl"]
    assert cost["proxies"][0]["cpu_relative"] == pytest.approx(1.0) and cost["proxies"][1]["cpu_s"] > 0
    with pytest.raises(SystemExit, match="--unit"):
        proxy_cost.main(proxy_cost.Config(data=str(out), proxies=["recon"], out_dir=str(tmp_path)))
    # on an untrained model of any architecture, at the shaped strategies of three targets
    proxy_cost.main(proxy_cost.Config(arch="smallcnn", dataset="digits", proxies=["bn", "recon:measure=kl"], per_target=2,
                                      proxy_images=100, data_dir="", out_dir=str(tmp_path), name="arch-cost"))
    cost = json.loads((tmp_path / "arch-cost.json").read_text())["results"]
    assert cost["strategies"] == 6 and cost["proxies"][1]["cpu_s"] > 0
    assert "untrained smallcnn on digits" in (tmp_path / "arch-cost.md").read_text()

    # --reuse: the earlier report's scores are kept, only a new proxy is scored
    from autoprune import AutopruneError

    scored_calls = []
    real_score = score_proxies.PruningTask.score
    monkeypatch.setattr(score_proxies.PruningTask, "score",
                        lambda self, strategy: scored_calls.append(self.settings.proxy) or real_score(self, strategy))
    again = dataclasses.replace(scored, proxies=["recon-bn", "bn:measure=kl"], name="again",
                                reuse=[str(tmp_path / "partial.json"), str(tmp_path / "scores.json")])
    score_proxies.main(again)
    second = json.loads((tmp_path / "again.json").read_text())["results"]
    assert scored_calls == ["bn"] * len(rows)  # the kl measure only: recon-bn came from the earlier report
    assert all(second["scores"][i]["recon-bn"] == report["scores"][i]["recon-bn"] for i in report["scores"])
    assert second["proxies"][0]["seconds_per_strategy"] == report["proxies"][1]["seconds_per_strategy"]
    assert second["proxies"][0]["reused_from"] == str(tmp_path / "scores.json") and second["proxies"][0]["reused"] == len(rows)
    assert second["proxies"][1]["reused_from"] is None and second["proxies"][1]["reused"] == 0
    with pytest.raises(AutopruneError, match="another settings"):
        score_proxies.main(dataclasses.replace(again, proxy_images=50))

    # an interrupted run keeps its scores in <name>.partial.json; the same command goes on from them
    def failing(self, strategy):
        if len(scored_calls) == 3:
            raise KeyboardInterrupt
        scored_calls.append(self.settings.proxy)
        return real_score(self, strategy)

    scored_calls.clear()
    monkeypatch.setattr(score_proxies.PruningTask, "score", failing)
    interrupted = dataclasses.replace(scored, proxies=["bn", "bn:measure=soft"], name="interrupted", reuse=[])
    with pytest.raises(KeyboardInterrupt):
        score_proxies.main(interrupted)
    assert (tmp_path / "interrupted.partial.json").is_file() and not (tmp_path / "interrupted.json").exists()
    with pytest.raises(AutopruneError, match="remove the file to score afresh"):  # made under other settings
        score_proxies.main(dataclasses.replace(interrupted, proxy_images=50))
    scored_calls.clear()
    monkeypatch.setattr(score_proxies.PruningTask, "score",
                        lambda self, strategy: scored_calls.append(self.settings.proxy) or real_score(self, strategy))
    score_proxies.main(interrupted)
    assert len(scored_calls) == 2 * len(rows) - 3  # the three scores made before the interruption are kept
    resumed = json.loads((tmp_path / "interrupted.json").read_text())["results"]
    assert all(resumed["scores"][i]["bn"] == report["scores"][i]["bn"] for i in report["scores"])  # deterministic
    assert not (tmp_path / "interrupted.partial.json").exists()
    with pytest.raises(AutopruneError, match="not a report of experiments.score_proxies"):
        score_proxies.main(dataclasses.replace(again, reuse=[str(out)]))

    # what the fine-tune rewards: a ρ per property and target, every group's keep ratio among them
    from experiments import strategy_features

    strategy_features.main(strategy_features.Config(data=str(out), out_dir=str(tmp_path), name="features"))
    features = json.loads((tmp_path / "features.json").read_text())["results"]
    groups = len(rows[0]["kept_channels"])
    assert len(features["spearman"]) == 5 + groups and features["per_target"] == {"0.3": 3, "0.5": 3, "0.7": 3}
    assert all(len(v) == len(rows) for v in features["features"].values())
    assert all(-1 <= r <= 1 for t in features["spearman"].values() for r in t.values() if r is not None)
    kept = features["features"]["parameters kept"]
    assert all(0 < v < 1 for v in kept.values())  # every strategy removes channels, hence parameters


def test_score_proxies_reads_proxy_specs():
    from autoprune import AutopruneError
    from experiments.score_proxies import parse_spec

    assert parse_spec("bn") == ("bn", {})
    assert parse_spec("recon-distill:steps=400,lr=0.02,recon=512") == (
        "recon-distill", {"finetune_steps": 400, "finetune_lr": 0.02, "reconstruct_images": 512})
    with pytest.raises(AutopruneError, match="unknown proxy"):
        parse_spec("distil:steps=3")
    with pytest.raises(AutopruneError, match="key=value"):
        parse_spec("distill:epochs=3")
    with pytest.raises(AutopruneError, match="give an integer, not 'many'"):
        parse_spec("distill:steps=many")
    assert parse_spec("recon-bn:bn=0,images=5000") == ("recon-bn", {"adaptive_bn": False, "num_images": 5000})
    assert parse_spec("bn:bn=on") == ("bn", {"adaptive_bn": True})
    with pytest.raises(AutopruneError, match="give 0 or 1"):
        parse_spec("bn:bn=maybe")


# ------------------------------------------------------------------ sparsity_study (issue #17)
@pytest.fixture(scope="module")
def sparse_small(trained_small, digits, tmp_path_factory):
    """``trained_small`` after one epoch of sparse training (bn-l1, dynamic thresholds), saved as a checkpoint."""
    import copy

    from autoprune.checkpoint import save_model
    from autoprune.training import TrainConfig, evaluate, fit

    model, _ = trained_small
    model = copy.deepcopy(model)
    torch.manual_seed(0)
    fit(model, digits, TrainConfig(epochs=1, batch_size=64, lr=0.02, sparsity="bn-l1", sparsity_lambda=1e-3,
                                   dynamic_thresholds=True), progress=False, log=lambda s: None)
    path = tmp_path_factory.mktemp("sparse") / "sparse.pt"
    save_model(path, model, "smallcnn", 10, {"kind": "base", "dataset": "digits", "val_size": digits.val_size,
                                            "input_shape": list(digits.input_shape),
                                            "test_accuracy": evaluate(model, digits.test)})
    return path


def test_sparsity_study_pairs_equal_budgets_and_resumes(trained_small, sparse_small, tmp_path, monkeypatch, one_thread):
    import json

    from autoprune import AutopruneError
    from experiments import sparsity_study

    _, plain = trained_small
    cfg = sparsity_study.Config(plain=str(plain), sparse=str(sparse_small), policy_plain="", policy_sparse="",
                                targets=[0.5], methods=["global", "elasticity"], steps=2, seeds=[0], data_dir="",
                                proxy_images=100, finetune_images=128, eval_images=100, threads=1,
                                out_dir=str(tmp_path), name="study")
    calls = []
    real = sparsity_study.prune_to_target

    def counted(task, target, **kw):
        if len(calls) == stop_after:
            raise KeyboardInterrupt  # the run stopped part-way
        calls.append((target, kw["iterative"]))
        return real(task, target, **kw)

    monkeypatch.setattr(sparsity_study, "prune_to_target", counted)
    stop_after = 5
    with pytest.raises(KeyboardInterrupt):
        sparsity_study.main(cfg)
    path = tmp_path / "study.json"
    first = json.loads(path.read_text())["results"]["rows"]
    assert len(first) == 5  # saved after every row
    with pytest.raises(AutopruneError, match="--resume"):  # never overwritten by accident
        sparsity_study.main(cfg)

    calls.clear()
    stop_after = None
    resumed = dataclasses.replace(cfg, resume=True)
    sparsity_study.main(resumed)
    rows = json.loads(path.read_text())["results"]["rows"]
    assert len(calls) == 3 and len(rows) == 8 and rows[:5] == first  # only the missing rows ran
    assert {(r["base"], r["method"], r["mode"]) for r in rows} == {
        (b, m, mode) for b in ("plain", "sparse") for m in ("global", "elasticity") for mode in ("one-shot", "iterative")}
    for r in rows:
        assert r["total_epochs"] == 2 and r["achieved_flops_ratio"] <= 0.5 + 1e-12  # equal budgets, the budget rule
        assert (r["steps"], r["epochs_per_step"]) == ((2, 1) if r["mode"] == "iterative" else (1, 2))
        assert len(r["step_log"]) == r["steps"] and 0 <= r["test_accuracy"] <= 100
        assert 0 <= r["test_accuracy_before_finetune"] <= 100 and r["params"] < r["dense_params"]
    for b in ("plain", "sparse"):  # one final strategy per method, reached at once or in steps
        for m in ("global", "elasticity"):
            assert len({tuple(r["kept_channels"]) for r in rows if (r["base"], r["method"]) == (b, m)}) == 1
    calls.clear()
    sparsity_study.main(resumed)
    assert calls == []
    md = (tmp_path / "study.md").read_text()
    assert "### Target 0.5" in md and "| base | method | FLOPs ratio | one-shot | iterative | iterative − one-shot |" in md
    assert "| plain | global |" in md and "| sparse | elasticity |" in md and "| sparse − plain | one-shot | iterative |" in md
    assert "Total fine-tune epochs: 2 in every row" in md

    with pytest.raises(AutopruneError, match="another epochs_per_step"):
        sparsity_study.main(dataclasses.replace(resumed, epochs_per_step=2))
    for bad, message in ((dict(steps=1), "--steps must be >= 2"), (dict(sparse=str(tmp_path / "none.pt")), "does not exist"),
                         (dict(methods=["global", "policy"]), "policy needs a policy directory"),
                         (dict(methods=["globl"]), "unknown method"), (dict(targets=[1.5]), "target")):
        with pytest.raises(AutopruneError, match=message):
            sparsity_study.main(dataclasses.replace(cfg, name="bad", **bad))
    assert calls == [] and not (tmp_path / "bad.json").exists()


def test_policy_vs_baselines_pairs_seeds_per_baseline_and_counts_the_verdicts(tmp_path):
    """``experiments.policy_vs_baselines`` on hand-made reports: a second report's policy rows enter under
    their label, AMC from a third report joins the baselines, and the verdicts follow a paired t-test."""
    import json

    from autoprune.errors import AutopruneError
    from experiments.policy_vs_baselines import Config, main

    config = {"base_fingerprint": "f", "data": "cifar10", "finetune_epochs": 1, "finetune_seeds": 3, "seed": 0}

    def report(name, rows, **changes):
        rows = [{"method": m, "target": t, "finetuned_test_accuracies": runs} for m, t, runs in rows]
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"config": config | changes, "rows": rows}))
        return str(tmp_path / name)

    own = report("own", [("policy", 0.3, [80.0, 80.2, 80.4]), ("global", 0.3, [79.0, 79.3, 79.4]),
                         ("uniform", 0.3, [80.1, 80.0, 80.6]),
                         ("policy", 0.5, [70.0, 70.1, 70.2]), ("global", 0.5, [71.0, 71.1, 71.3]),
                         ("uniform", 0.5, [69.0, 69.5, 69.8])])
    amc = report("amc", [("amc", 0.5, [70.5, 69.0, 70.9])])
    seed1 = report("seed1", [("policy", 0.3, [78.0, 78.1, 78.2]), ("policy", 0.5, [70.2, 70.3, 70.1])])
    results = main(Config(reports=[own, amc], policy=[f"seed 1={seed1}"], name="pvb", out_dir=str(tmp_path / "docs")))
    assert results["policies"] == ["policy", "seed 1"] and results["baselines"] == ["uniform", "global", "amc"]
    versus_global = results["comparisons"]["policy"]["global"]
    assert versus_global["per_target"]["0.3"]["mean"] == pytest.approx(0.9667, abs=1e-3)
    assert versus_global["per_target"]["0.3"]["verdict"] == "ahead"
    assert versus_global["per_target"]["0.5"]["verdict"] == "behind"
    assert (versus_global["ahead"], versus_global["behind"], versus_global["at_least"]) == (1, 1, 1)
    # +0.97 at 0.3 and -1.03 at 0.5: level on average over the two
    assert versus_global["mean_difference"] == pytest.approx(-0.0333, abs=1e-3)
    assert versus_global["mean_difference_verdict"] == "within noise"
    versus_uniform = results["comparisons"]["policy"]["uniform"]
    assert versus_uniform["per_target"]["0.3"]["verdict"] == "within noise" and versus_uniform["targets"] == 2
    assert results["comparisons"]["policy"]["amc"]["targets"] == 1  # AMC ran at 0.5 only
    assert results["comparisons"]["seed 1"]["global"]["per_target"]["0.3"]["verdict"] == "behind"
    markdown = (tmp_path / "docs" / "pvb.md").read_text()
    assert "**seed 1** − baseline" in markdown and "vs global: ahead at 1 of 2 targets" in markdown

    other = report("other", [("policy", 0.3, [1.0])], finetune_seeds=1)
    with pytest.raises(AutopruneError, match="finetune_seeds: not comparable"):
        main(Config(reports=[own], policy=[f"x={other}"], out_dir=str(tmp_path / "docs")))
    with pytest.raises(AutopruneError, match="already a method"):
        main(Config(reports=[own], policy=[f"global={seed1}"], out_dir=str(tmp_path / "docs")))
    with pytest.raises(AutopruneError, match="no policy rows"):
        main(Config(reports=[amc], out_dir=str(tmp_path / "docs")))
    with pytest.raises(AutopruneError, match="holds no policy rows"):
        main(Config(reports=[own], policy=[f"x={amc}"], out_dir=str(tmp_path / "docs")))

    # a new policy against the baselines of an earlier report: its baseline rows, not its policy's
    new = report("new", [("policy", 0.3, [81.0, 81.2, 81.4]), ("policy", 0.5, [72.0, 72.1, 72.2])])
    results = main(Config(reports=[new, amc], baselines_from=[own], name="pvb2", out_dir=str(tmp_path / "docs")))
    assert results["policies"] == ["policy"] and results["baselines"] == ["uniform", "global", "amc"]
    assert results["comparisons"]["policy"]["global"]["per_target"]["0.3"]["mean"] == pytest.approx(1.9667, abs=1e-3)
    only = main(Config(reports=[new, amc], baselines_from=[own], targets=[0.5], name="pvb3", out_dir=str(tmp_path / "docs")))
    assert only["targets"] == [0.5] and only["comparisons"]["policy"]["global"]["targets"] == 1
    with pytest.raises(AutopruneError, match="no rows at target"):
        main(Config(reports=[new], baselines_from=[own], targets=[0.9], out_dir=str(tmp_path / "docs")))
    with pytest.raises(AutopruneError, match="finetune_seeds: its rows are not comparable"):
        main(Config(reports=[new], baselines_from=[other], out_dir=str(tmp_path / "docs")))
    # the earlier policy as a baseline of the new one
    against = main(Config(reports=[new], baselines_from=[own], reference=[f"old={own}"], name="pvb4",
                          out_dir=str(tmp_path / "docs")))
    assert against["policies"] == ["policy"] and against["baselines"] == ["uniform", "global", "old"]
    assert against["comparisons"]["policy"]["old"]["per_target"]["0.3"]["mean"] == pytest.approx(1.0)
    with pytest.raises(AutopruneError, match="--reference label 'global' is already a method"):
        main(Config(reports=[new], baselines_from=[own], reference=[f"global={own}"], out_dir=str(tmp_path / "docs")))
    from experiments.merge_reports import merge

    rows, config, _ = merge([Path(new)], [Path(own)])
    assert sorted((r["method"], r["target"]) for r in rows if r["method"] == "policy") == [("policy", 0.3), ("policy", 0.5)]
    assert len(rows) == 6 and list(config["baselines_from"]) == [own]


def test_scripts_end_on_a_one_line_error(tmp_path):
    """``experiments.common.run_script``: an ``AutopruneError`` is one line on stderr and exit status 2."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "experiments.policy_vs_baselines", "--reports", str(tmp_path / "none")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"policy_vs_baselines: error: {tmp_path / 'none' / 'results.json'} does not exist: "
        f"run `autoprune evaluate --out {tmp_path / 'none'}` first"]
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "results.json").write_text("{not json")
    (tmp_path / "table.json").write_text('{"rows": [{"method": "uniform", "target": 0.5}]}')
    for args, message in (
            (["merge_reports", str(damaged), "--out", str(tmp_path / "m")], "is not valid JSON"),
            (["score_proxies", "--data", str(tmp_path / "none.json")], "does not exist"),
            (["score_proxies", "--data", str(damaged / "results.json")], "is not valid JSON"),
            (["strategy_features", "--data", str(tmp_path / "table.json")], "is not a file of experiments.fidelity_data"),
            (["finetune_recipes", "--report", str(tmp_path / "table.json"), "--method", "foo"], "holds no foo row at target")):
        done = subprocess.run([sys.executable, "-m", f"experiments.{args[0]}", *args[1:]], cwd=ROOT, capture_output=True,
                              text=True)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, (args, done.stderr)
    assert not (tmp_path / "m").exists()
    for script in CONFIGURED:  # every script's command line goes through run_script
        assert (ROOT / "experiments" / f"{script}.py").read_text().rstrip().endswith("run_script(main, Config)"), script


def test_reconstruction_measures_a_baseline_strategy_without_a_report(trained_small, tmp_path, monkeypatch, one_thread):
    """``experiments.reconstruction --report ""``: a new base model is measured on a baseline's strategies."""
    from autoprune.errors import AutopruneError
    from experiments import reconstruction
    from experiments.reconstruction import Config, main

    monkeypatch.chdir(tmp_path)
    _, checkpoint = trained_small
    cfg = Config(checkpoint=str(checkpoint), data_dir="", report="", method="global", targets=[0.5], images=64, threads=1,
                 name="recon")
    main(cfg)
    row = json.loads((tmp_path / "docs" / "results" / "recon.json").read_text())["results"]["rows"][0]
    assert 0.48 <= row["flops_ratio"] <= 0.5 and row["layers_refitted"] >= 1
    assert "global's strategies found on the base model" in (tmp_path / "docs" / "results" / "recon.md").read_text()

    # --resume keeps the measured target and measures only the new one; other settings are refused
    searched = []
    real = reconstruction.create_searcher
    monkeypatch.setattr(reconstruction, "create_searcher", lambda name: searched.append(name) or real(name))
    main(dataclasses.replace(cfg, targets=[0.5, 0.7], resume=True))
    rows = json.loads((tmp_path / "docs" / "results" / "recon.json").read_text())["results"]["rows"]
    assert [r["target"] for r in rows] == [0.5, 0.7] and rows[0] == row
    assert searched == ["global", "global"]  # the unknown-method check, then the search at 0.7 alone
    with pytest.raises(AutopruneError, match="images"):
        main(dataclasses.replace(cfg, images=32, resume=True))
    with pytest.raises(AutopruneError, match="foo"):
        main(Config(checkpoint=str(checkpoint), data_dir="", report="", method="foo", targets=[0.5], threads=1))


def test_env_check_times_episodes_under_the_proxy_it_is_given(tmp_path):
    from experiments import env_check

    env_check.main(env_check.Config(arch="smallcnn", data="digits", data_dir="", episodes=3, proxy_images=100,
                                    proxy="recon", proxy_measure="kl", name="check", out_dir=str(tmp_path)))
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["config"]["proxy"] == "recon" and report["results"]["episodes"] == 3
    assert 0 < report["results"]["proxy_forward_s_mean"] <= report["results"]["episode_s_mean"]
    assert "| smallcnn | recon, kl, 100 images |" in (tmp_path / "check.md").read_text()
