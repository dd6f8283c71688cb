import os

import numpy as np
import pytest
import torch
from PIL import Image

from autoprune import AutopruneError
from autoprune.data import BatchLoader, load_dataset, load_splits


def test_digits_splits_are_disjoint_and_fixed(digits):
    again = load_splits("digits")
    assert torch.equal(digits.val.images, again.val.images)
    assert len(digits.train) + len(digits.val) == len(load_dataset("digits", split="train"))
    assert digits.input_shape == (3, 16, 16) and digits.num_classes == 10
    train_set = {bytes(x.numpy()) for x in digits.train.images}
    assert not any(bytes(x.numpy()) in train_set for x in digits.val.images[:50])


def test_loader_batches_are_normalised_and_augmented(digits):
    plain = next(iter(BatchLoader(digits.train, 64)))[0]
    aug = next(iter(BatchLoader(digits.train, 64, augment=True)))[0]
    assert plain.shape == aug.shape == (64, 3, 16, 16)
    assert plain.is_contiguous(memory_format=torch.channels_last)
    assert abs(plain.mean().item()) < 1.0
    assert not torch.equal(plain, aug)
    assert len(BatchLoader(digits.train, 100, drop_last=True)) == len(digits.train) // 100


def _write_folder(root, n_per_class=3, size=8):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n_per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


def test_image_folder_is_read_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "data")
    ds = load_dataset("imagefolder", tmp_path / "data", "train")
    assert ds.images.shape == (6, 3, 8, 8) and ds.classes == ["cat", "dog"]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = load_dataset("imagefolder", tmp_path / "data", "train")
    assert torch.equal(ds.images, again.images)
    # a changed file invalidates the cache; the stale copy for the same folder is removed
    first = next((tmp_path / "cache").glob("*.npz"))
    changed = tmp_path / "data" / "train" / "cat" / "0.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(changed)
    os.utime(changed, (1e9, 1e9))
    redone = load_dataset("imagefolder", tmp_path / "data", "train")
    assert redone.images[0].sum() == 0
    caches = list((tmp_path / "cache").glob("*.npz"))
    assert len(caches) == 1 and caches[0] != first


def test_bad_data_inputs_are_clear_errors(tmp_path):
    with pytest.raises(AutopruneError, match="does not exist"):
        load_dataset("imagefolder", tmp_path / "missing")
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(AutopruneError, match="no images"):
        load_dataset("imagefolder", tmp_path / "empty")
    with pytest.raises(AutopruneError, match="unknown data set"):
        load_dataset("mnistt")
    with pytest.raises(AutopruneError, match="val_size"):
        load_splits("digits", val_size=10**6)
