"""``prune --iterative K``: the target reached in K prune--fine-tune steps (issue #17)."""

import json

import numpy as np
import pytest
import torch
from helpers import in_budget

from autoprune import models
from autoprune.agents.query import gradual_counts, prune_to_target, step_ratios
from autoprune.checkpoint import load_model
from autoprune.cli import main
from autoprune.errors import AutopruneError
from autoprune.pruning import PruningSpace, count_flops
from autoprune.recovery import FinetuneRecipe
from autoprune.task import PruningTask


def dense_flops(model):
    return count_flops(model, torch.zeros(1, 3, 16, 16))


def check_steps(summary, steps, epochs):
    assert summary["iterative"] == steps and len(summary["steps"]) == steps
    assert summary["total_finetune_epochs"] == steps * epochs
    counts = np.array([s["channels"] for s in summary["steps"]])
    assert np.all(np.diff(counts, axis=0) <= 0)  # no group ever grows back
    assert np.any(counts[0] > counts[-1])  # and the steps are gradual, not all at the end
    ratios = [s["achieved_flops_ratio"] for s in summary["steps"]]
    assert all(a >= b for a, b in zip(ratios, ratios[1:]))
    assert all(s["achieved_flops_ratio"] == pytest.approx(s["target_flops_ratio"]) for s in summary["steps"])
    assert summary["achieved_flops_ratio"] == ratios[-1]
    return counts


def test_a_policy_reaches_its_one_shot_strategy_in_three_steps(policy_dir, tmp_path, capsys):
    out, ckpt = policy_dir
    base, _ = load_model(ckpt)
    common = ["prune", "--policy", str(out), "--checkpoint", str(ckpt), "--target", "0.4"]
    assert main([*common, "--out", str(tmp_path / "once.pt")]) == 0
    once = json.loads((tmp_path / "once.pt").with_suffix(".json").read_text())
    assert once["iterative"] == 1 and once["total_finetune_epochs"] == 0
    capsys.readouterr()
    assert main([*common, "--iterative", "3", "--finetune-epochs", "1", "--out", str(tmp_path / "steps.pt")]) == 0
    assert "3 steps, total fine-tune epochs 3" in capsys.readouterr().out
    summary = json.loads((tmp_path / "steps.pt").with_suffix(".json").read_text())
    counts = check_steps(summary, 3, 1)
    assert summary["channels"] == once["channels"]  # the final allocation is the policy's
    assert counts[-1].tolist() == [k for k, _ in once["channels"].values()]
    assert in_budget(summary["achieved_flops_ratio"], 0.4)
    model, payload = load_model(tmp_path / "steps.pt")
    assert payload["meta"]["iterative"] == 3 and payload["meta"]["total_finetune_epochs"] == 3
    assert in_budget(dense_flops(model) / dense_flops(base), 0.4)  # measured on the saved model, against the base


def test_a_method_prunes_iteratively_too(trained_small, tmp_path, capsys):
    _, ckpt = trained_small
    out = tmp_path / "u.pt"
    assert main(["prune", "--method", "uniform", "--checkpoint", str(ckpt), "--target", "0.5", "--round-to", "4",
                 "--iterative", "2", "--finetune-epochs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "step 1/2: FLOPs ratio" in printed and "step 2/2: FLOPs ratio" in printed
    assert "2 steps, total fine-tune epochs 2" in printed
    summary = json.loads(out.with_suffix(".json").read_text())
    counts = check_steps(summary, 2, 1)
    assert np.all(counts % 4 == 0)  # every step keeps counts the rounding allows
    assert summary["method"] == "uniform" and in_budget(summary["achieved_flops_ratio"], 0.5)
    model, payload = load_model(out)
    assert payload["meta"]["steps"] == summary["steps"]
    assert dense_flops(model) == pytest.approx(summary["achieved_flops_ratio"] * dense_flops(load_model(ckpt)[0]), abs=1)


@pytest.mark.parametrize("extra, message", [
    ([], "--iterative 2 needs --finetune-epochs >= 1"),
    (["--finetune-epochs", "1", "--reconstruct", "64"], "cannot be combined with --reconstruct"),
])
def test_iterative_refuses_what_it_cannot_run_in_one_line(trained_small, tmp_path, capsys, extra, message):
    _, ckpt = trained_small
    out = tmp_path / "x.pt"
    assert main(["prune", "--method", "uniform", "--checkpoint", str(ckpt), "--target", "0.5", "--iterative", "2",
                 *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_the_library_refuses_iterative_without_a_fine_tune(trained_small, digits):
    model, _ = trained_small
    task = PruningTask(model, digits)
    with pytest.raises(AutopruneError, match="--finetune-epochs"):
        prune_to_target(task, 0.5, method="uniform", iterative=3)
    with pytest.raises(AutopruneError, match=">= 1"):
        prune_to_target(task, 0.5, method="uniform", recipe=FinetuneRecipe(epochs=1), iterative=0)
    with pytest.raises(AutopruneError, match="--reconstruct"):
        prune_to_target(task.derive(reconstruct=64), 0.5, method="uniform", recipe=FinetuneRecipe(epochs=1), iterative=2)


def test_gradual_counts_shrink_to_the_final_counts():
    space = PruningSpace(models.create("smallcnn"), torch.zeros(1, 3, 16, 16), round_to=8)
    final = space.keep_counts(np.array([0.5, 0.25, 0.5, 0.125]))
    rows = gradual_counts(space, final, 4)
    assert rows.shape == (4, space.num_groups) and rows[-1].tolist() == final.tolist()
    assert np.all(np.diff(np.vstack([space.channels, rows]), axis=0) <= 0)
    assert all(n in space.allowed_counts(g) for row in rows for g, n in enumerate(row))


def test_step_ratios_matches_groups_by_root_and_refuses_another_model():
    model = models.create("smallcnn").eval()
    base = PruningSpace(model, torch.zeros(1, 3, 16, 16))
    counts = base.channels.copy()
    counts[0] = 1  # a group left with one channel is no group of the pruned model's space
    pruned = base.apply(counts / base.channels)
    current = PruningSpace(pruned, base.example_inputs)
    assert [g.root for g in current.groups] == [g.root for g in base.groups[1:]]
    wanted = counts.copy()
    wanted[1:] = base.channels[1:] // 2
    assert (current.keep_counts(step_ratios(base, current, counts, wanted)) == wanted[1:]).all()
    wanted[0] = 2
    with pytest.raises(AutopruneError, match="not prunable in the pruned model"):
        step_ratios(base, current, counts, wanted)
    other = PruningSpace(models.create("concatnet").eval(), base.example_inputs)
    with pytest.raises(AutopruneError, match="do not correspond"):
        step_ratios(base, other, base.channels, base.channels)
