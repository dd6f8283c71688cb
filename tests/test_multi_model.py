"""One policy searched on several base models (``search --checkpoint A --checkpoint B``) and a search
that starts from a trained policy (``search --init-policy DIR``)."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import in_budget

from autoprune import AutopruneError, models
from autoprune.agents import SearchConfig, load_policy, search
from autoprune.agents.policy import read_policy
from autoprune.cli import main
from autoprune.envs import ChannelPruningEnv
from autoprune.task import PruningSettings, PruningTask

FAST = ["--proxy-images", "64", "--no-progress"]
CHEAP = [*FAST, "--reward", "accuracy"]  # no reward baselines to measure
TRANSFERABLE = PruningSettings(observation="transferable", proxy_images=64, reward="accuracy")


def fail(capsys, argv, message):
    """The CLI refuses ``argv`` with exit status 2 and one line naming ``message``."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


class DeepCNN(nn.Module):
    """Seven narrow conv-BN-ReLU layers: deeper than smallcnn (7 channel groups, not 4) and as cheap."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        widths = [in_channels, 8, 8, 16, 16, 16, 24, 24]
        self.features = nn.Sequential(*(nn.Sequential(nn.Conv2d(a, b, 3, 2 if i in (2, 5) else 1, 1, bias=False),
                                                      nn.BatchNorm2d(b), nn.ReLU())
                                        for i, (a, b) in enumerate(zip(widths, widths[1:]))))
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def deepcnn():
    """``deepcnn`` in the model registry for this module only (checkpoints name their architecture)."""
    from autoprune.models.registry import MODELS

    MODELS.register("deepcnn")(DeepCNN)
    yield
    del MODELS._entries["deepcnn"]


@pytest.fixture(scope="module")
def bases(digits, deepcnn, tmp_path_factory):
    """Untrained base models on the digits: smallcnn (4 groups), deepcnn (7 groups), and a third
    architecture (concatnet) no policy is searched on."""
    from autoprune.checkpoint import save_model

    directory = tmp_path_factory.mktemp("bases")
    paths = {}
    for seed, arch in enumerate(("smallcnn", "deepcnn", "concatnet")):
        torch.manual_seed(seed)
        path = directory / f"{arch}.pt"
        save_model(path, models.create(arch), arch, 10, {"kind": "base", "dataset": "digits", "val_size": digits.val_size,
                                                         "input_shape": list(digits.input_shape)})
        paths[arch] = path
    return paths


@pytest.fixture(scope="module")
def multi(bases, tmp_path_factory):
    """A policy searched through the CLI on smallcnn and deepcnn (the observation defaults to transferable)."""
    out = tmp_path_factory.mktemp("multi") / "policy"
    argv = ["search", "--checkpoint", str(bases["smallcnn"]), "--checkpoint", str(bases["deepcnn"]),
            "--episodes", "6", "--warmup", "2", "--checkpoint-every", "3", "--out", str(out), *FAST]
    assert main(argv) == 0
    return out


def test_a_search_on_two_models_records_both_and_visits_both(multi, bases):
    meta = json.loads((multi / "policy.json").read_text())
    assert meta["settings"]["observation"] == "transferable"  # the default with several checkpoints
    small, deep = (load_policy(multi, checkpoint=bases[a]) for a in ("smallcnn", "deepcnn"))
    assert [b["arch"] for b in meta["bases"]] == ["smallcnn", "deepcnn"]
    assert [b["checkpoint"] for b in meta["bases"]] == [str(bases["smallcnn"]), str(bases["deepcnn"])]
    fingerprints = [b["fingerprint"] for b in meta["bases"]]
    assert len(set(fingerprints)) == 2 and meta["base_fingerprint"] == fingerprints[0]  # the first, as before
    assert meta["arch"] == "smallcnn" and meta["groups"] == meta["bases"][0]["groups"]
    assert [len(b["groups"]) for b in meta["bases"]] == [small.space.num_groups, deep.space.num_groups] == [4, 7]
    episodes = [b["episodes"] for b in meta["bases"]]
    assert all(e > 0 for e in episodes) and sum(episodes) == meta["episodes"] == 6
    rows = list(csv.DictReader(open(multi / "progress.csv")))
    lengths = {len(r["strategy"].split()) for r in rows}
    assert lengths == {4, 7}  # episodes walked either model's groups
    for base in meta["bases"]:  # each model's own best strategies
        assert all(len(found["strategy"]) == len(base["groups"]) for found in base["best_per_target_bin"].values())
    assert meta["best_per_target_bin"] == meta["bases"][0]["best_per_target_bin"]
    assert (multi / "importance.pt").is_file() and (multi / "importance-1.pt").is_file()
    assert small.base == 0 and deep.base == 1 and not small.transferred and not deep.transferred
    assert [len(s) for s in small.scores] == [int(c) for _, c in meta["bases"][0]["groups"]]
    assert [len(s) for s in deep.scores] == [int(c) for _, c in meta["bases"][1]["groups"]]


def test_both_models_prune_without_transfer_and_a_third_needs_it(multi, bases, tmp_path, capsys):
    for arch in ("smallcnn", "deepcnn"):
        for target in ("0.35", "0.7"):
            out = tmp_path / f"{arch}-{target}.pt"
            assert main(["prune", "--policy", str(multi), "--checkpoint", str(bases[arch]), "--target", target,
                         "--best-of", "2", "--out", str(out)]) == 0
            summary = json.loads(out.with_suffix(".json").read_text())
            assert in_budget(summary["achieved_flops_ratio"], float(target))
            assert "transferred_from" not in summary
    third = ["prune", "--policy", str(multi), "--checkpoint", str(bases["concatnet"]), "--target", "0.5"]
    fail(capsys, [*third, "--out", str(tmp_path / "x.pt")], "--transfer")
    assert not (tmp_path / "x.pt").exists()
    assert main([*third, "--transfer", "--out", str(tmp_path / "t.pt")]) == 0
    assert in_budget(json.loads((tmp_path / "t.json").read_text())["achieved_flops_ratio"], 0.5)
    torch.manual_seed(5)  # the architecture of a base, other weights: still foreign
    with pytest.raises(AutopruneError, match="none of them"):
        load_policy(multi, model=models.create("deepcnn"))


def test_several_models_need_an_observation_that_means_the_same_on_each(bases, tmp_path, capsys):
    two = ["--checkpoint", str(bases["smallcnn"]), "--checkpoint", str(bases["deepcnn"])]
    fail(capsys, ["search", *two, "--observation", "layer", "--episodes", "2", "--out", str(tmp_path / "p"), *FAST],
         "--observation transferable")
    assert not (tmp_path / "p").exists()
    with pytest.raises(AutopruneError, match="transferable"):
        search(tmp_path / "q", SearchConfig(episodes=2), checkpoint=[bases["smallcnn"], bases["deepcnn"]], progress=False)
    with pytest.raises(AutopruneError, match="more than once"):
        search(tmp_path / "d", SearchConfig(episodes=2, settings=TRANSFERABLE), checkpoint=[bases["smallcnn"]] * 2,
               progress=False)


def test_a_search_on_several_models_resumes_only_with_the_same_models_in_order(bases, digits, tmp_path):
    ckpts = [bases["smallcnn"], bases["concatnet"]]
    config = SearchConfig(episodes=3, warmup_episodes=1, checkpoint_every=3, settings=TRANSFERABLE,
                          agent="td3")
    search(tmp_path, config, checkpoint=ckpts, progress=False)
    longer = SearchConfig(episodes=5, warmup_episodes=1, checkpoint_every=3, settings=TRANSFERABLE, agent="td3")
    with pytest.raises(AutopruneError, match="same order"):
        search(tmp_path, longer, checkpoint=ckpts[::-1], progress=False, resume=True)
    with pytest.raises(AutopruneError, match="same order"):
        search(tmp_path, longer, checkpoint=ckpts[0], progress=False, resume=True)
    policy = search(tmp_path, longer, checkpoint=ckpts, progress=False, resume=True)
    assert policy.meta["episodes"] == 5 and sum(b["episodes"] for b in policy.meta["bases"]) == 5
    assert len(list(csv.DictReader(open(tmp_path / "progress.csv")))) == 5


def test_init_policy_starts_from_the_trained_network_and_records_it(multi, bases, tmp_path, capsys):
    source = load_policy(multi, checkpoint=bases["concatnet"], transfer=True)
    # learning rate 0: the agent never moves, so the new policy is the initial one -- the source's network
    config = SearchConfig(episodes=2, learning_rate=0.0, settings=TRANSFERABLE, init_policy=str(multi))
    assert config.warmup_episodes == 0  # a trained policy needs no random-action warm-up
    adapted = search(tmp_path / "lr0", config, checkpoint=bases["concatnet"], progress=False)
    source_state, adapted_state = source.network.state_dict(), adapted.network.state_dict()
    for key in source_state:
        if key.startswith(("actor.", "critic.")):
            assert torch.equal(source_state[key], adapted_state[key]), key
    for t in (0.3, 0.5, 0.8):
        np.testing.assert_array_equal(adapted.strategy(t), source.strategy(t))
    record = adapted.meta["init_policy"]
    multi_meta = json.loads((multi / "policy.json").read_text())
    assert record["path"] == str(multi) and record["fingerprints"] == [b["fingerprint"] for b in multi_meta["bases"]]

    # through the CLI: agent, settings and target range default to the source policy's
    out = tmp_path / "adapted"
    assert main(["search", "--init-policy", str(multi), "--checkpoint", str(bases["concatnet"]), "--episodes", "2",
                 "--out", str(out), *CHEAP]) == 0
    meta, _ = read_policy(out)
    assert meta["init_policy"]["path"] == str(multi) and meta["config"]["warmup_episodes"] == 0
    assert meta["settings"]["observation"] == "transferable" and meta["agent"] == "ddpg"
    assert meta["target_range"] == multi_meta["target_range"] and meta["arch"] == "concatnet"
    assert main(["prune", "--policy", str(out), "--checkpoint", str(bases["concatnet"]), "--target", "0.5",
                 "--out", str(tmp_path / "c.pt")]) == 0  # its own base now: no --transfer

    fail(capsys, ["search", "--init-policy", str(multi), "--checkpoint", str(bases["concatnet"]), "--agent", "td3",
                  "--out", str(tmp_path / "bad"), *CHEAP], "use --agent ddpg")
    fail(capsys, ["search", "--init-policy", str(multi), "--checkpoint", str(bases["concatnet"]), "--observation", "layer",
                  "--out", str(tmp_path / "bad"), *CHEAP], "use --observation transferable")
    fail(capsys, ["search", "--init-policy", str(tmp_path / "nothing"), "--checkpoint", str(bases["concatnet"]),
                  "--out", str(tmp_path / "bad"), *CHEAP], "not a policy directory")
    assert not (tmp_path / "bad").exists()


def test_a_layer_policy_adapts_to_its_architecture_only(bases, tmp_path, capsys):
    src = tmp_path / "layer"
    search(src, SearchConfig(episodes=2, warmup_episodes=1, settings=PruningSettings(proxy_images=64, reward="accuracy")),
           checkpoint=bases["smallcnn"], progress=False)
    torch.manual_seed(9)  # a retrained smallcnn: the same groups, so the layer features mean the same
    from autoprune.checkpoint import save_model

    retrained = tmp_path / "retrained.pt"
    save_model(retrained, models.create("smallcnn"), "smallcnn", 10, {"kind": "base", "dataset": "digits"})
    assert main(["search", "--init-policy", str(src), "--checkpoint", str(retrained), "--episodes", "1",
                 "--out", str(tmp_path / "ok"), *CHEAP]) == 0
    fail(capsys, ["search", "--init-policy", str(src), "--checkpoint", str(bases["concatnet"]), "--episodes", "1",
                  "--out", str(tmp_path / "bad"), *CHEAP], "--observation transferable")
    fail(capsys, ["search", "--init-policy", str(src), "--checkpoint", str(retrained), "--checkpoint",
                  str(bases["concatnet"]), "--episodes", "1", "--out", str(tmp_path / "bad"), *CHEAP],
         "--observation transferable")


def test_the_env_switches_models_on_reset_each_with_its_own_baseline(bases, digits):
    from autoprune.checkpoint import load_model

    settings = TRANSFERABLE.replace(reward="relative")  # the default reward: a baseline per model
    tasks = [PruningTask(load_model(bases[a])[0], digits, settings) for a in ("smallcnn", "deepcnn")]
    env = ChannelPruningEnv(tasks, target_range=(0.3, 0.8))
    seen = set()
    for seed in range(5):
        obs, info = env.reset(seed=seed, options={"target": 0.5})  # one baseline grid point per model
        steps, done = 0, False
        while not done:
            obs, reward, done, _, end = env.step(np.zeros(1, np.float32))
            steps += 1
        assert steps == tasks[info["model"]].space.num_groups and end["model"] == info["model"]
        assert in_budget(end["achieved_flops_ratio"], end["target"])
        seen.add(info["model"])
    assert seen == {0, 1}
    for task in tasks:  # each model's reward baseline: its own prior's proxy accuracy
        assert task._baselines == {0.5: task.score(task.prior_strategy(0.5))}
    _, info = env.reset(options={"model": 1, "target": 0.5})
    assert info == {"target": 0.5, "model": 1} and env.task is tasks[1]
    # one task draws no number for the model: the same targets as ever for a seed
    single = ChannelPruningEnv(tasks[0], target_range=(0.3, 0.8))
    rng = np.random.default_rng(3)
    assert single.reset(seed=3)[1]["target"] == pytest.approx(float(rng.uniform(0.3, 0.8)))
    with pytest.raises(AutopruneError, match="transferable"):
        ChannelPruningEnv([PruningTask(t.model, digits, space=t.space, scores=t.scores) for t in tasks])


def test_a_search_on_several_models_runs_on_ray_workers_and_repeats(bases, tmp_path):
    pytest.importorskip("ray")
    from autoprune.agents.parallel import connect, disconnect

    connect(2)
    try:
        config = SearchConfig(episodes=4, warmup_episodes=1, checkpoint_every=4, workers=2, settings=TRANSFERABLE)
        runs = []
        for name in ("a", "b"):
            # library models only: the workers rebuild them from their classes (deepcnn lives in this test file)
            policy = search(tmp_path / name, config, checkpoint=[bases["smallcnn"], bases["concatnet"]], progress=False)
            rows = list(csv.DictReader(open(tmp_path / name / "progress.csv")))
            assert [int(r["episode"]) for r in rows] == [1, 2, 3, 4]
            assert sum(b["episodes"] for b in policy.meta["bases"]) == 4
            runs.append([(r["target"], r["strategy"]) for r in rows])
        assert runs[0] == runs[1]  # the same seed and workers: the same models, targets and strategies
    finally:
        disconnect()


def test_the_transfer_report_joins_a_transferred_policy_with_the_own_policy_and_baselines(multi, bases, tmp_path):
    """``experiments.transfer_report``: the multi-model policy is deepcnn's own; a policy searched on
    smallcnn alone is applied to deepcnn with --transfer, under the same fine-tune and paired seeds."""
    from experiments.transfer_report import Config
    from experiments.transfer_report import main as report

    alone = tmp_path / "alone"
    assert main(["search", "--checkpoint", str(bases["smallcnn"]), "--observation", "transferable", "--episodes", "3",
                 "--warmup", "1", "--out", str(alone), *CHEAP]) == 0
    same = ["--checkpoint", str(bases["deepcnn"]), "--targets", "0.4,0.6", "--finetune-epochs", "1",
            "--finetune-seeds", "2", "--proxy-images", "64"]
    assert main(["evaluate", "--policy", str(multi), "--baselines", "uniform,global", *same, "--out", str(tmp_path / "own")]) == 0
    assert main(["evaluate", "--policy", str(alone), "--transfer", "--baselines", "", *same, "--out", str(tmp_path / "zs")]) == 0
    results = report(Config(own=str(tmp_path / "own"), other=[f"zero-shot={tmp_path / 'zs'}"], name="t",
                            out_dir=str(tmp_path / "docs")))
    assert results["columns"] == ["policy (own)", "zero-shot", "global", "uniform"] and results["targets"] == [0.4, 0.6]
    assert all(len(runs) == 2 for runs in results["cells"].values())  # every cell: both paired seeds
    verdict = results["verdicts"]["zero-shot"]
    zs = {t: np.mean(results["cells"][f"zero-shot@{t:g}"]) for t in (0.4, 0.6)}
    assert verdict["five_target_mean"] == pytest.approx(np.mean(list(zs.values())))
    uniform = np.mean(results["cells"]["uniform@0.4"])
    assert verdict["minus_uniform"][0.4][0] == pytest.approx(zs[0.4] - uniform)
    markdown = (tmp_path / "docs" / "t.md").read_text()
    assert "| 0.40 |" in markdown and "zero-shot** − uniform" in markdown

    one_seed = [a if a != "2" else "1" for a in same]
    assert main(["evaluate", "--policy", str(alone), "--transfer", "--baselines", "", *one_seed,
                 "--out", str(tmp_path / "other")]) == 0
    with pytest.raises(AutopruneError, match="not comparable"):  # another fine-tune budget
        report(Config(own=str(tmp_path / "own"), other=[f"x={tmp_path / 'other'}"], out_dir=str(tmp_path / "docs")))
    with pytest.raises(AutopruneError, match="LABEL=DIR"):
        report(Config(own=str(tmp_path / "own"), other=[str(tmp_path / "zs")], out_dir=str(tmp_path / "docs")))
