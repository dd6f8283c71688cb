import copy
import math

import pytest
import torch
import torch.nn as nn

from autoprune import AutopruneError, models
from autoprune.cli import main
from autoprune.sparsity import (
    DEFAULT_FLOOR,
    SparsityRegularizer,
    bn_layers,
    layer_threshold,
    plot_scale_distributions,
    summarize,
)
from autoprune.training import TrainConfig, fit

QUICK = {"batch_size": 64, "lr": 0.1, "max_batches_per_epoch": 6}


def _fresh():
    torch.manual_seed(0)
    return models.create("smallcnn", num_classes=10, in_channels=3)


def _quiet(line):
    pass


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def base(digits):
    """A smallcnn after one short epoch of ordinary training: the starting point of sparse training."""
    model = _fresh()
    fit(model, digits, TrainConfig(epochs=1, **QUICK), progress=False, log=_quiet)
    return model


def _skew_first_layer(model):
    """Give the first BN layer two large scales and many small ones: its mean lies above 3/4 of its channels."""
    with torch.no_grad():
        bn = bn_layers(model)[0][1]
        bn.weight.copy_(torch.linspace(0.05, 0.2, bn.num_features))
        bn.weight[:2] = 5.0
    return model


def test_the_penalty_shrinks_the_scales_against_lambda_zero(digits, base):
    runs = {}
    for lam in (0.0, 0.02):
        model = copy.deepcopy(base)
        config = TrainConfig(epochs=2, sparsity="bn-l1", sparsity_lambda=lam, **QUICK)
        runs[lam] = fit(model, digits, config, progress=False, log=_quiet)
    plain, sparse = runs[0.0].sparsity["layers"], runs[0.02].sparsity["layers"]
    assert [r["layer"] for r in plain] == [r["layer"] for r in sparse] == [name for name, _ in bn_layers(base)]
    for a, b in zip(plain, sparse):
        assert b["mean_abs"] < a["mean_abs"] - 0.02, (a, b)
        assert a["threshold"] is None and b["threshold"] is None  # plain slimming: one global threshold, later
    assert summarize(sparse)["mean_abs"] < summarize(plain)["mean_abs"]
    rows = runs[0.02].history
    assert all("layers" in row["sparsity"] and "mean_abs" in row["sparsity"] for row in rows)
    assert rows[-1]["sparsity"]["mean_abs"] < rows[0]["sparsity"]["mean_abs"]


def test_threshold_rule_and_floor_on_a_skewed_layer():
    scales = torch.tensor([5.0, 4.0, *torch.linspace(0.05, 0.2, 14).tolist()])
    mean = float(scales.mean())
    # 14 of 16 channels lie below the mean, so the floor (a quarter: 4 channels) caps the threshold
    assert sum(scales < mean) == 14
    t = layer_threshold(scales, ratio=1.0, floor=0.25)
    assert t == pytest.approx(float(scales.sort(descending=True).values[3]))
    assert int((scales >= t).sum()) == 4
    assert layer_threshold(scales, ratio=0.01, floor=0.25) == pytest.approx(0.01 * mean)  # floor not binding
    assert layer_threshold(torch.ones(8)) == 1.0  # a fresh layer: nothing strictly below


def test_the_subgradient_only_touches_channels_below_their_threshold():
    model = _skew_first_layer(_fresh())
    with torch.no_grad():
        for _, bn in bn_layers(model)[1:]:
            bn.weight.copy_(torch.linspace(-1, 1, bn.num_features))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    reg = SparsityRegularizer("bn-l1", 0.1, dynamic_thresholds=True)
    reg.after_backward(model)
    for name, bn in bn_layers(model):
        t, w, g = reg.thresholds[name], bn.weight.detach(), bn.weight.grad
        below = w.abs() < t
        assert torch.equal(g[below], 0.1 * torch.sign(w[below]))
        assert torch.all(g[~below] == 0)
        assert (~below).float().mean() >= DEFAULT_FLOOR
    plain = SparsityRegularizer("bn-l1", 0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    plain.after_backward(model)
    assert all(torch.equal(bn.weight.grad, 0.1 * torch.sign(bn.weight.detach())) for _, bn in bn_layers(model))


def test_dynamic_thresholds_never_leave_a_layer_below_its_floor(digits, base):
    config = TrainConfig(epochs=3, sparsity="bn-l1", sparsity_lambda=0.05, dynamic_thresholds=True, **QUICK)
    plain = fit(_skew_first_layer(copy.deepcopy(base)), digits,
                TrainConfig(epochs=3, sparsity="bn-l1", sparsity_lambda=0.05, **QUICK), progress=False, log=_quiet)
    lines = []
    result = fit(_skew_first_layer(copy.deepcopy(base)), digits, config, progress=False, log=lines.append)
    for row in [*(r["sparsity"] for r in result.history), result.sparsity]:
        for layer in row["layers"]:
            assert layer["threshold"] > 0
            assert layer["above_threshold"] >= DEFAULT_FLOOR - 1e-9, layer
            assert math.ceil(DEFAULT_FLOOR * layer["channels"]) <= round(layer["above_threshold"] * layer["channels"])
    assert any("under their layer threshold" in line for line in lines)
    assert sum("mean |gamma|" in line for line in lines) == 3  # one summary line per epoch
    # the protected channels keep their size; plain slimming shrinks every channel
    assert result.sparsity["layers"][0]["mean_abs"] > plain.sparsity["layers"][0]["mean_abs"]
    assert result.sparsity["dynamic_thresholds"] and result.sparsity["floor"] == DEFAULT_FLOOR


def test_sparse_training_resumes_exactly(digits, base, tmp_path):
    config = TrainConfig(epochs=3, sparsity="bn-l1", sparsity_lambda=0.05, dynamic_thresholds=True, **QUICK)
    whole = copy.deepcopy(base)
    result = fit(whole, digits, config, progress=False, log=_quiet)

    def stop_at_epoch_two(line):
        if line.startswith("epoch   2/3  loss"):
            raise _Stop

    partial = tmp_path / "run.partial"
    with pytest.raises(_Stop):
        fit(copy.deepcopy(base), digits, config, resume_path=partial, progress=False, log=stop_at_epoch_two)
    saved = torch.load(partial, weights_only=True)
    assert saved["epoch"] == 1 and saved["sparsity"]["dynamic_thresholds"]
    assert set(saved["sparsity"]["thresholds"]) == {name for name, _ in bn_layers(base)}
    resumed = copy.deepcopy(base)
    again = fit(resumed, digits, config, resume_path=partial, progress=False, log=_quiet)
    assert [r["val_accuracy"] for r in again.history] == [r["val_accuracy"] for r in result.history]
    assert again.sparsity == result.sparsity
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_regularizer_state_round_trip_and_mismatch():
    model = _skew_first_layer(_fresh())
    reg = SparsityRegularizer("bn-l1", 1e-3, dynamic_thresholds=True)
    reg.on_epoch_end(model)
    copy_ = SparsityRegularizer("bn-l1", 1e-3, dynamic_thresholds=True)
    copy_.load_state_dict(reg.state_dict())
    assert copy_.thresholds == reg.thresholds and copy_.layer_stats(model) == reg.layer_stats(model)
    with pytest.raises(AutopruneError, match="other settings"):
        SparsityRegularizer("bn-l1", 1e-2, dynamic_thresholds=True).load_state_dict(reg.state_dict())


def test_a_resume_file_from_before_the_sparsity_settings_still_resumes(digits, tmp_path):
    config = TrainConfig(epochs=2, **QUICK)
    partial = tmp_path / "old.partial"

    def stop(line):
        if line.startswith("epoch   2/2"):
            raise _Stop

    with pytest.raises(_Stop):
        fit(_fresh(), digits, config, resume_path=partial, progress=False, log=stop)
    state = torch.load(partial, weights_only=True)
    for key in ("sparsity", "sparsity_lambda", "dynamic_thresholds"):
        del state["config"][key]
    del state["sparsity"]
    torch.save(state, partial)
    lines = []
    fit(_fresh(), digits, config, resume_path=partial, progress=False, log=lines.append)
    assert lines[0].startswith("resuming from")
    with pytest.raises(AutopruneError, match="other settings"):
        fit(_fresh(), digits, TrainConfig(epochs=2, sparsity="bn-l1", **QUICK), resume_path=partial, progress=False,
            log=_quiet)


def test_config_and_model_checks():
    with pytest.raises(AutopruneError, match="unknown sparsity method 'l2'"):
        TrainConfig(sparsity="l2")
    with pytest.raises(AutopruneError, match="lambda must be a finite number >= 0"):
        TrainConfig(sparsity="bn-l1", sparsity_lambda=-1e-4)
    with pytest.raises(AutopruneError, match="dynamic thresholds need a sparsity method"):
        TrainConfig(dynamic_thresholds=True)
    no_bn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    with pytest.raises(AutopruneError, match="no BatchNorm layer"):
        SparsityRegularizer().check_model(no_bn)


def test_plot_accepts_models_and_snapshots(tmp_path):
    model = _skew_first_layer(_fresh())
    path = tmp_path / "s.png"
    plot_scale_distributions(_fresh(), model, path, thresholds={"features.0.1": 0.5})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_sparse_training_from_a_trained_base(tmp_path, capsys):
    from autoprune.checkpoint import read_checkpoint

    first, second = tmp_path / "base.pt", tmp_path / "sparse.pt"
    common = ["--arch", "smallcnn", "--batch-size", "64", "--epochs", "1", "--no-progress"]
    assert main(["train", *common, "--out", str(first)]) == 0
    assert not (tmp_path / "base.pt.scales.png").exists()
    capsys.readouterr()
    assert main(["train", *common, "--init", str(first), "--sparsity", "bn-l1", "--sparsity-lambda", "1e-3",
                 "--dynamic-thresholds", "--out", str(second)]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "sparse.pt.scales.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "sparse.pt.partial").exists()
    meta = read_checkpoint(second)["meta"]
    assert meta["config"]["sparsity"] == "bn-l1" and meta["config"]["sparsity_lambda"] == 1e-3
    assert meta["config"]["dynamic_thresholds"] is True and meta["init"]["epochs"] == 1
    assert meta["sparsity"]["scales_plot"] == "sparse.pt.scales.png"
    assert [r["layer"] for r in meta["sparsity"]["layers"]] == [r["layer"] for r in meta["sparsity"]["before"]]
    assert all(r["above_threshold"] >= DEFAULT_FLOOR for r in meta["sparsity"]["layers"])
    assert "layers" in meta["history"][0]["sparsity"]
    assert "features.3.1" in text and "threshold" in text and "mean |gamma|" in text


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "l2"], "unknown sparsity method 'l2'; choose one of bn-l1"),
    (["--sparsity", "bn-l1", "--sparsity-lambda", "-1"], "lambda must be a finite number >= 0"),
    (["--dynamic-thresholds"], "dynamic thresholds need a sparsity method"),
    (["--sparsity-lambda", "1e-3"], "--sparsity-lambda needs a sparsity method"),
])
def test_bad_sparsity_arguments_are_one_line_and_nonzero(tmp_path, capsys, args, message):
    out = tmp_path / "x.pt"
    assert main(["train", "--arch", "smallcnn", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "x.pt.scales.png").exists()
