import json
import subprocess
import sys

import pytest

from autoprune.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True)


def test_train_then_info(tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["train", "--arch", "smallcnn", "--epochs", "1", "--batch-size", "64", "--out", str(out), "--no-progress"]) == 0
    assert out.exists() and not (tmp_path / "m.pt.partial").exists()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "FLOPs (MACs/image)" in text and "(1.000)" in text


@pytest.mark.parametrize("args, message", [
    (["train", "--arch", "nope", "--out", "x.pt"], "unknown model 'nope'"),
    (["train", "--arch", "smallcnn", "--data", "imagefolder", "--data-dir", "/nonexistent", "--out", "x.pt"], "does not exist"),
    (["train", "--arch", "smallcnn", "--epochs", "0", "--out", "x.pt"], "nothing to train"),
    (["info", "missing.pt"], "does not exist"),
    (["evaluate", "--checkpoint", "missing.pt", "--targets", "0.5", "--finetune-seeds", "0", "--out", "r"], "--finetune-seeds must be >= 1"),
    (["evaluate", "--checkpoint", "missing.pt", "--targets", "0.5", "--finetune-seeds", "3", "--out", "r"], "needs --finetune-epochs"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()


@pytest.fixture
def small_model(tmp_path):
    from autoprune import models, save_model

    path = tmp_path / "small.pt"
    save_model(path, models.create("smallcnn"), "smallcnn", 10, {"dataset": "digits", "input_shape": [3, 16, 16]})
    return path


@pytest.mark.parametrize("args, message, left", [
    (["evaluate", "--checkpoint", "missing.pt", "--targets", "0.3,,0.5", "--out", "r"], "without empty items", "r"),
    (["evaluate", "--checkpoint", "missing.pt", "--targets", "0.5,0.5", "--out", "r"], "more than once", "r"),
    (["evaluate", "--checkpoint", "{model}", "--targets", "0.5,1.5", "--out", "r"], "target must be a FLOPs ratio", "r"),
    (["evaluate", "--checkpoint", "missing.pt", "--baselines", "", "--out", "r"], "nothing to evaluate", "r"),
    (["evaluate", "--checkpoint", "missing.pt", "--baselines", "uniform,,global", "--out", "r"], "--baselines must be", "r"),
    (["evaluate", "--checkpoint", "missing.pt", "--policy-best-of", "3", "--out", "r"], "give --policy DIR", "r"),
    (["evaluate", "--checkpoint", "{model}", "--out", "{model}"], "is a file: give a folder", None),
    (["train", "--arch", "smallcnn", "--epochs", "1", "--out", "adir"], "is a directory: give a file name", "adir.partial"),
    (["train", "--arch", "smallcnn", "--label-smoothing", "2", "--out", "x.pt"], "label smoothing must be in", "x.pt"),
    (["info", "adir"], "adir is a directory, not a file", None),
    (["bench", "adir"], "model file adir is a directory, not a file", None),
    (["search", "--checkpoint", "missing.pt", "--resume", "--out", "s"], "nothing to resume in s", "s"),
    (["search", "--checkpoint", "{model}", "--out", "{model}/s"], "is a file, not a folder", None),
    (["prune", "--policy", "nopolicy", "--checkpoint", "{model}", "--target", "0.5", "--out", "p.pt"],
     "nopolicy is not a policy directory", "p.pt"),
    (["finetune", "{model}", "--teacher", "missing.pt", "--epochs", "1", "--out", "f.pt"],
     "checkpoint missing.pt does not exist", "f.pt"),
    (["finetune", "{model}", "--no-distill", "--epochs", "1", "--temperature", "0", "--out", "f.pt"],
     "temperature must be > 0", "f.pt"),
    (["quantize", "{model}", "--qat-epochs", "3", "--out", "q.onnx"], "applies to --method qat", "q.onnx"),
    (["bench", "{model}", "--json", "adir"], "is a directory: give a file name", None),
    (["demo", "--episodes", "0", "--out", "d"], "episodes must be >= 1", "d"),
])
def test_bad_input_is_refused_before_any_work(tmp_path, small_model, args, message, left):
    """One line on stderr, exit status 2, no traceback, and nothing written where the output would go."""
    (tmp_path / "adir").mkdir()
    args = [a.replace("{model}", str(small_model)) for a in args]
    result = subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    if left is not None:
        assert not (tmp_path / left).exists()


@pytest.mark.parametrize("args", [["--threads", "0", "models"], ["train", "--arch", "smallcnn", "--seed", "-1", "--out", "x.pt"],
                                  ["search", "--checkpoint", "x.pt", "--workers", "0", "--out", "s"]])
def test_out_of_range_numbers_are_argument_errors(tmp_path, args):
    result = subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("autoprune")  # argparse: usage, then the error
    assert not any(tmp_path.iterdir())


def test_damaged_policy_and_resume_files_name_the_file(tmp_path):
    from autoprune import AutopruneError
    from autoprune.agents.policy import read_policy
    from autoprune.training import TrainConfig, fit

    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "policy.json").write_text("{}")
    (policy / "policy.pt").write_bytes(b"\x80\x04junk")
    with pytest.raises(AutopruneError, match="policy weights .*policy.pt is damaged or not a PyTorch weights file"):
        read_policy(policy)
    (policy / "policy.json").write_text("{oops")
    with pytest.raises(AutopruneError, match="policy.json is not valid JSON"):
        read_policy(policy)
    partial = tmp_path / "run.partial"
    partial.write_bytes(b"garbage")
    from autoprune import models
    from autoprune.data import load_splits

    with pytest.raises(AutopruneError, match="resume file .*run.partial is damaged"):
        fit(models.create("smallcnn"), load_splits("digits"), TrainConfig(epochs=1), resume_path=partial,
            progress=False, log=lambda line: None)


def test_corrupt_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    result = run("info", str(bad))
    assert result.returncode == 2 and "not a readable autoprune model file" in result.stderr


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--episodes", "12"]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "demo" / "base.pt").exists() and (tmp_path / "demo" / "policy" / "policy.json").exists()
    assert (tmp_path / "demo" / "report" / "pareto.png").exists()
    settings = json.loads((tmp_path / "demo" / "policy" / "policy.json").read_text())["settings"]
    assert (settings["proxy"], settings["proxy_measure"]) == ("bn", "accuracy")  # the demo's, not the library's
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith(("| policy", "| uniform"))]
    assert len(rows) == 6 and all(float(r[2]) <= float(r[1]) for r in rows)
