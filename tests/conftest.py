import os

import pytest
import torch

os.environ.setdefault("AUTOPRUNE_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "autoprune"))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny models, which a second thread only slows on a busy machine;
    the count is restored after the module (use with ``pytest.mark.usefixtures``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    from autoprune.data import load_splits

    return load_splits("digits")


@pytest.fixture(scope="session")
def trained_small(digits, tmp_path_factory):
    """A smallcnn trained briefly on the embedded digits, saved as a checkpoint."""
    from autoprune import models
    from autoprune.checkpoint import save_model
    from autoprune.training import TrainConfig, evaluate, fit

    torch.manual_seed(0)
    model = models.create("smallcnn")
    fit(model, digits, TrainConfig(epochs=4, batch_size=64, lr=0.1), progress=False, log=lambda s: None)
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    meta = {"kind": "base", "dataset": "digits", "val_size": digits.val_size, "input_shape": list(digits.input_shape),
            "test_accuracy": evaluate(model, digits.test)}
    save_model(path, model, "smallcnn", 10, meta)
    return model.eval(), path


@pytest.fixture(scope="session")
def policy_dir(trained_small, tmp_path_factory):
    """A conditional policy searched briefly on ``trained_small``: (policy directory, checkpoint)."""
    from autoprune.agents.conditional import SearchConfig, search

    _, ckpt = trained_small
    out = tmp_path_factory.mktemp("policy")
    search(out, SearchConfig(episodes=12, warmup_episodes=4, checkpoint_every=4), checkpoint=ckpt, progress=False)
    return out, ckpt
