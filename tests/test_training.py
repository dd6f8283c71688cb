import pytest
import torch

from autoprune import AutopruneError, models
from autoprune.cli import main
from autoprune.training import TrainConfig, fit


def _fresh():
    torch.manual_seed(0)
    return models.create("smallcnn", num_classes=10, in_channels=3)


class _Stop(Exception):
    pass


def test_weight_averaging_follows_the_schedule_and_resumes_exactly(digits, tmp_path):
    config = TrainConfig(epochs=1, batch_size=64, lr=0.1, swa_epochs=2, swa_lr=0.05, max_batches_per_epoch=6)
    whole = _fresh()
    result = fit(whole, digits, config, progress=False, log=lambda line: None)
    assert [bool(row.get("swa")) for row in result.history] == [False, True, True]
    assert all(row["lr"] == 0.05 for row in result.history[1:])

    lines = []
    fit(_fresh(), digits, config, progress=False, log=lines.append)
    # each epoch line says when the run will end, the last one does not
    assert ["ETA" in line for line in lines if "epoch" in line] == [True, True, False]
    lines = []

    def stop_in_averaging(line):
        lines.append(line)
        if line.startswith("swa epoch   3"):
            raise _Stop

    partial = tmp_path / "run.partial"
    cut = _fresh()
    with pytest.raises(_Stop):
        fit(cut, digits, config, resume_path=partial, progress=False, log=stop_in_averaging)
    assert torch.load(partial, weights_only=True)["swa"]["count"] == 1
    resumed = _fresh()
    again = fit(resumed, digits, config, resume_path=partial, progress=False, log=lambda line: None)
    assert [row["val_accuracy"] for row in again.history] == [row["val_accuracy"] for row in result.history]
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_averaged_weights_are_the_mean_of_the_epoch_snapshots(digits):
    from autoprune.training import _WeightAverage

    snapshots = [_fresh() for _ in range(3)]
    for i, m in enumerate(snapshots):
        with torch.no_grad():
            for p in m.parameters():
                p.fill_(float(i))
    average = _WeightAverage()
    for m in snapshots:
        average.update(m)
    assert all(torch.allclose(v, torch.full_like(v, 1.0)) for k, v in average.mean.items() if "weight" in k and "bn" not in k)


def test_config_rejects_an_empty_run():
    with pytest.raises(AutopruneError, match="nothing to train"):
        TrainConfig(epochs=0)
    with pytest.raises(AutopruneError, match="SWA learning rate"):
        TrainConfig(epochs=1, swa_epochs=1, swa_lr=0)


def test_warm_restart_with_averaging_from_the_cli(tmp_path):
    from autoprune.checkpoint import read_checkpoint

    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    common = ["--arch", "smallcnn", "--batch-size", "64", "--no-progress"]
    assert main(["train", *common, "--epochs", "1", "--out", str(first)]) == 0
    assert main(["train", *common, "--epochs", "0", "--swa-epochs", "1", "--init", str(first), "--out", str(second)]) == 0
    meta = read_checkpoint(second)["meta"]
    assert meta["init"]["epochs"] == 1 and meta["config"]["swa_epochs"] == 1
    assert meta["history"][0]["swa"]
    assert main(["train", *common, "--epochs", "1", "--init", str(tmp_path / "none.pt"), "--out", str(tmp_path / "c.pt")]) != 0
    assert not (tmp_path / "c.pt").exists()


def test_bf16_training_learns_and_keeps_float32_weights(digits):
    model = _fresh()
    result = fit(model, digits, TrainConfig(epochs=2, batch_size=64, lr=0.1, precision="bf16"), progress=False, log=lambda line: None)
    assert result.history[-1]["val_accuracy"] > 50  # ten classes: chance is 10%
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_unknown_precision_is_refused():
    with pytest.raises(AutopruneError, match="unknown precision 'fp16'"):
        TrainConfig(precision="fp16")


def test_training_device_is_checked_and_the_model_comes_back_on_the_cpu(digits, capsys):
    from autoprune.training import set_training_device, training_device

    assert main(["--device", "tpu", "models"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["--device", "cuda", "models"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    try:
        device = set_training_device("auto")
        model = _fresh()
        fit(model, digits, TrainConfig(epochs=1, batch_size=64, max_batches_per_epoch=2), progress=False, log=lambda s: None)
        assert training_device() == device
        assert all(p.device.type == "cpu" for p in model.parameters())
    finally:
        set_training_device("cpu")
