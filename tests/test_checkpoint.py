import subprocess
import sys

import numpy as np
import pytest
import torch

from autoprune import AutopruneError, models
from autoprune.checkpoint import load_model, save_model
from autoprune.pruning import PruningSpace


def test_pruned_model_round_trips_in_a_fresh_process(tmp_path):
    model = models.create("resnet20").eval()
    space = PruningSpace(model, torch.randn(1, 3, 32, 32))
    pruned = space.apply(np.random.default_rng(0).uniform(0.2, 0.9, space.num_groups)).eval()
    path = tmp_path / "pruned.pt"
    save_model(path, pruned, "resnet20", 10, {"target": 0.5})
    x = torch.randn(4, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    expected = pruned(x)
    code = (
        "import torch, autoprune;"
        f"m = autoprune.load_pruned(r'{path}'); x = torch.load(r'{tmp_path / 'x.pt'}');"
        "assert m.autoprune_meta['target'] == 0.5 and m.autoprune_meta['arch'] == 'resnet20';"
        f"torch.save(m(x).detach(), r'{tmp_path / 'y.pt'}')"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected.detach(), rtol=0, atol=0)
    loaded, payload = load_model(path)
    assert payload["meta"]["target"] == 0.5


def test_corrupt_truncated_and_foreign_files_are_refused(tmp_path):
    model = models.create("smallcnn")
    good = tmp_path / "good.pt"
    save_model(good, model, "smallcnn", 10)
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    torch.save(model.state_dict(), tmp_path / "foreign.pt")
    torch.save({"format": "autoprune.model/1", "arch": "smallcnn"}, tmp_path / "partial.pt")
    for name, message in [("trunc.pt", "not a readable"), ("junk.pt", "not a readable"), ("foreign.pt", "not an autoprune"),
                          ("partial.pt", "damaged"), ("missing.pt", "does not exist")]:
        with pytest.raises(AutopruneError, match=message):
            load_model(tmp_path / name)


def test_a_file_that_does_not_fit_its_architecture_names_the_keys(tmp_path):
    model = models.create("smallcnn")
    save_model(tmp_path / "m.pt", model, "smallcnn", 10)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    dropped = next(iter(payload["state_dict"]))
    del payload["state_dict"][dropped]
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(AutopruneError, match=f"does not match architecture 'smallcnn': Missing key.*{dropped}"):
        load_model(tmp_path / "m.pt")


def test_file_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "autoprune.model/1", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(AutopruneError, match="not a readable"):
        load_model(tmp_path / "evil.pt")


def test_metadata_with_odd_types_still_loads_safely(tmp_path):
    model = models.create("smallcnn")
    save_model(tmp_path / "m.pt", model, "smallcnn", 10, {"torch": torch.__version__, "acc": np.float64(0.5), "shape": (3, 32, 32)})
    _, payload = load_model(tmp_path / "m.pt")
    assert payload["meta"] == {"torch": str(torch.__version__), "acc": 0.5, "shape": [3, 32, 32]}


def test_half_precision_file_is_smaller_and_loads_as_float32(tmp_path, trained_small, capsys):
    from autoprune.cli import main

    _, path = trained_small
    out = tmp_path / "half.pt"
    assert main(["convert", str(path), "--half", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "with float16 weights" in printed
    assert out.stat().st_size < 0.6 * path.stat().st_size
    full, _ = load_model(path)
    half, payload = load_model(out)
    assert payload["stored_dtype"] == "float16" and payload["meta"]["converted_from"] == str(path)
    assert all(p.dtype == torch.float32 for p in half.state_dict().values() if p.is_floating_point())
    for (name, a), b in zip(full.state_dict().items(), half.state_dict().values()):
        if a.is_floating_point():  # the float16 rounding, no more
            torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0, msg=name)
    assert main(["convert", str(path), "--out", str(tmp_path / "same.pt")]) == 2
    assert not (tmp_path / "same.pt").exists()
