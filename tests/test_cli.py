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
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith(("| policy", "| uniform"))]
    assert len(rows) == 6 and all(float(r[2]) <= float(r[1]) for r in rows)
