import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from autoprune import models
from autoprune.checkpoint import load_model, save_model
from autoprune.cli import main
from autoprune.data import BatchLoader
from autoprune.deploy.bench import bench, format_table
from autoprune.deploy.export import export, max_abs_difference
from autoprune.deploy.fakequant import WEIGHT_QMAX, ActivationFakeQuant, prepare_qat, strip_qat
from autoprune.deploy.files import evaluate_file, open_model
from autoprune.deploy.quantize import quantize
from autoprune.pruning import PruningSpace
from autoprune.recovery import FinetuneRecipe, finetune
from autoprune.training import evaluate

SHAPE = (3, 16, 16)


def real_images(digits, n=128):
    return next(iter(BatchLoader(digits.test, n)))[0]


def pruned_copy(model):
    space = PruningSpace(model, torch.zeros(1, *SHAPE))
    return space.apply(space.uniform(0.5))


@pytest.fixture(scope="module")
def pruned_small(trained_small, tmp_path_factory):
    """The trained smallcnn pruned to half its FLOPs (no recovery), saved like a pruned model."""
    model, base_path = trained_small
    pruned = pruned_copy(model)
    path = tmp_path_factory.mktemp("pruned") / "pruned.pt"
    save_model(path, pruned, "smallcnn", 10, {**load_model(base_path)[1]["meta"], "kind": "pruned"})
    return pruned, path


@pytest.fixture(scope="module")
def int8_small(trained_small, digits, tmp_path_factory):
    model, _ = trained_small
    path = tmp_path_factory.mktemp("int8") / "small.int8.onnx"
    return quantize(model, digits, path, calib_batches=4, progress=False), path


@pytest.mark.parametrize("which", ["trained smallcnn", "pruned resnet20"])
def test_onnx_matches_pytorch_on_real_images(which, trained_small, digits, tmp_path):
    model = trained_small[0] if which == "trained smallcnn" else pruned_copy(models.create("resnet20").eval())
    path = tmp_path / "m.onnx"
    export(model, path, "onnx", SHAPE, {"dataset": "digits"})
    x = real_images(digits)
    assert max_abs_difference(model, path, x) <= 1e-4
    assert max_abs_difference(model, path, x[:1]) <= 1e-4  # the batch axis is dynamic
    mf = open_model(path)
    assert (mf.format, mf.precision, mf.input_shape, mf.meta["dataset"]) == ("onnx", "fp32", SHAPE, "digits")
    if which == "trained smallcnn":
        assert evaluate_file(path, digits.test) == pytest.approx(evaluate(model, digits.test))


def test_torchscript_matches_pytorch(pruned_small, digits, tmp_path):
    model, _ = pruned_small
    path = tmp_path / "m.ts"
    export(model, path, "torchscript", SHAPE, {"dataset": "digits"})
    assert max_abs_difference(model, path, real_images(digits)) <= 1e-5
    mf = open_model(path)
    assert (mf.format, mf.input_shape) == ("torchscript", SHAPE)
    assert evaluate_file(path, "digits") == pytest.approx(evaluate(model, digits.test))


def test_quantize_is_3_5x_smaller_where_weights_dominate(digits, tmp_path):
    # ResNet-20 (0.27M parameters): fp32 weights are ~98% of the ONNX file and int8 stores them in a quarter;
    # per-channel scales, int32 biases and the (compacted) QDQ graph bring the ratio to ~3.7x.
    model = models.create("resnet20").eval()
    result = quantize(model, digits, tmp_path / "r20.int8.onnx", calib_batches=2, progress=False,
                      meta={"history": [{"epoch": i, "loss": 1.0} for i in range(100)]})
    assert result.size_ratio >= 3.5
    mf = open_model(result.path)
    assert mf.precision == "int8" and "history" not in mf.meta  # the training log stays in the .pt file
    assert evaluate_file(result.path, digits.test) == pytest.approx(result.int8_accuracy)


def test_ptq_keeps_accuracy_of_a_small_model(int8_small, digits):
    result, path = int8_small
    # smallcnn has 34k parameters: graph, per-channel scales and int32 biases weigh relatively more (~3.4x)
    assert result.size_ratio >= 3.0
    assert result.int8_accuracy >= result.fp32_accuracy - 3
    assert evaluate_file(path, digits.test) == pytest.approx(result.int8_accuracy)
    assert open_model(path).meta["quantization"]["method"] == "ptq"
    # weights in the reduced range that QAT simulates: full-range int8 saturates on CPUs without VNNI
    import onnx
    from onnx import numpy_helper

    weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == WEIGHT_QMAX


def test_qat_runs_and_keeps_accuracy(trained_small, digits, tmp_path):
    model, _ = trained_small
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = quantize(model, digits, tmp_path / "qat.onnx", method="qat", qat_epochs=1, calib_batches=4, progress=False,
                      log=lambda s: None)
    assert result.qat is not None and result.int8_accuracy >= result.fp32_accuracy - 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input model is untouched


def test_fake_quant_rounds_to_the_int8_grid_and_strips_cleanly(trained_small, digits):
    model = copy.deepcopy(trained_small[0]).eval()
    x = real_images(digits, 64)
    reference, keys = model(x), set(model.state_dict())
    prepare_qat(model)
    for m in model.modules():  # observe activation ranges without touching BN statistics
        if isinstance(m, ActivationFakeQuant):
            m.train()
    model(x)
    model.eval()
    w = model.features[1][0].weight  # fake-quantized: at most 2 * WEIGHT_QMAX + 1 levels per output channel
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True) / WEIGHT_QMAX
    assert torch.allclose(w / scale, torch.round(w / scale), atol=1e-3)
    quantized = model(x)
    assert (quantized.argmax(1) == reference.argmax(1)).float().mean() > 0.95
    strip_qat(model)
    assert set(model.state_dict()) == keys and torch.allclose(model(x), reference, atol=1e-5)


def test_bench_rows_side_by_side(trained_small, int8_small):
    _, base = trained_small
    _, int8 = int8_small
    rows = bench([int8], baseline=base, batches=(1, 8), repeats=3, warmup=1, threads=1)
    assert {(r["runtime"], r["batch"]) for r in rows} == {(rt, b) for rt in ("torch", "onnxruntime") for b in (1, 8)}
    assert all(r["latency_ms"] > 0 and r["throughput"] > 0 for r in rows)
    assert not any(r["runtime"] == "torch" and r["precision"] == "int8" for r in rows)  # ONNX files run in ONNX Runtime
    assert all(r["speedup"] == 1.0 for r in rows if r["role"] == "baseline")
    assert "int8" in format_table(rows)


def test_folding_batchnorm_keeps_outputs_and_marks_the_rows(trained_small, pruned_small):
    from autoprune.deploy.bench import fold_batchnorm

    base, path = trained_small
    pruned, pruned_path = pruned_small
    for model in (base, pruned):
        folded = fold_batchnorm(model)
        x = torch.randn(4, 3, 32, 32)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert torch.allclose(folded(x), model.eval()(x), atol=1e-4)
    rows = bench([pruned_path], baseline=path, batches=(2,), repeats=2, warmup=1, threads=1, runtimes=("torch",), fold_bn=True)
    assert [r["runtime"] for r in rows] == ["torch (BN folded)"] * 2


@pytest.mark.parametrize("distill", [False, True])
def test_finetune_keeps_or_improves_val_accuracy(distill, trained_small, digits):
    base, _ = trained_small
    model = pruned_copy(base)
    recipe = FinetuneRecipe(epochs=1, lr=0.01, batch_size=64, distill=distill)
    result = finetune(model, digits, recipe, teacher=base if distill else None, progress=False, log=lambda s: None)
    assert result.val_after >= result.val_before and result.summary()["distill"] == distill
    assert evaluate(model, digits.val) == pytest.approx(result.val_after)


def test_finetune_cli_writes_a_loadable_model(trained_small, pruned_small, digits, tmp_path, capsys):
    _, base = trained_small
    _, pruned = pruned_small
    out = tmp_path / "tuned.pt"
    assert main(["finetune", str(pruned), "--epochs", "1", "--batch-size", "64", "--distill", "--teacher", str(base),
                 "--out", str(out), "--no-progress"]) == 0
    model, payload = load_model(out)
    meta = payload["meta"]
    assert meta["kind"] == "pruned" and meta["finetune"]["distill"] and meta["finetune"]["epochs"] == 1
    assert meta["test_accuracy"] == pytest.approx(evaluate(model, digits.test))
    assert "val" in capsys.readouterr().out


def test_quantize_and_bench_cli(trained_small, tmp_path, capsys):
    _, base = trained_small
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(base), "--calib-batches", "2", "--out", str(out), "--no-progress"]) == 0
    assert "smaller" in capsys.readouterr().out
    assert main(["bench", str(out), "--baseline", str(base), "--batch", "1", "--repeats", "2", "--threads", "1"]) == 0
    table = capsys.readouterr().out
    assert "q.onnx" in table and "1.00x" in table
    report = tmp_path / "bench.json"
    assert main(["bench", str(out), "--baseline", str(base), "--batch", "2", "--repeats", "1", "--threads", "1",
                 "--runtimes", "torch", "--fold-bn", "--json", str(report)]) == 0
    saved = json.loads(report.read_text())
    assert saved["settings"]["fold_bn"] and [r["batch"] for r in saved["rows"]] == [2] and "torch" in saved["versions"]


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("case", ["missing model", "unknown format", "corrupt model"])
def test_bad_input_is_one_line_exit_2(case, trained_small, tmp_path):
    _, base = trained_small
    corrupt = tmp_path / "bad.onnx"
    corrupt.write_bytes(b"\x00garbage")
    args, message = {
        "missing model": (["export", "missing.pt", "--out", "x.onnx"], "does not exist"),
        "unknown format": (["export", str(base), "--format", "tflite", "--out", "x.onnx"], "unknown export format 'tflite'"),
        "corrupt model": (["bench", str(corrupt)], "is not an autoprune model, TorchScript or ONNX file"),
    }[case]
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("args, message", [
    (["quantize", "{base}", "--method", "fp16", "--out", "{tmp}/x.onnx"], "unknown quantization method 'fp16'"),
    (["quantize", "{base}", "--out", "{tmp}/x.pt"], "ending in .onnx"),
    (["quantize", "{bad}", "--out", "{tmp}/x.onnx"], "not a readable autoprune model file"),
    (["finetune", "{base}", "--epochs", "1", "--distill", "--out", "{tmp}/x.pt"], "needs the unpruned model"),
    (["finetune", "{base}", "--epochs", "1", "--no-distill", "--teacher", "{base}", "--out", "{tmp}/x.pt"], "only used for distillation"),
    (["finetune", "{base}", "--epochs", "1", "--no-distill", "--data", "cifar10", "--out", "{tmp}/x.pt"], "needs --data-dir"),
    (["bench", "{base}", "--batch", "0"], "batch sizes must be positive"),
])
def test_bad_input_in_process(args, message, trained_small, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    args = [a.format(base=trained_small[1], bad=bad, tmp=tmp_path) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("x.*"))


def test_int8_runs_at_any_batch_size(int8_small):
    from autoprune.deploy.runtime import ort_session

    _, path = int8_small
    session = ort_session(open_model(path).onnx_bytes(), threads=1)
    for n in (1, 7):
        out = session.run(None, {"input": np.zeros((n, *SHAPE), np.float32)})[0]
        assert out.shape == (n, 10)
