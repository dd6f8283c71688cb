"""Train / validation / test splits; validation is carved from the training set."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from autoprune.data.datasets import ImageDataset, load_dataset
from autoprune.errors import AutopruneError

SPLIT_SEED = 0  # fixed so that every command carves the same validation images


@dataclass
class DataSplits:
    train: ImageDataset  # training images minus the validation split
    val: ImageDataset  # held out from training; the reward proxy's data
    test: ImageDataset  # final numbers only
    val_size: int

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.train.input_shape


def default_val_size(n_train: int) -> int:
    return min(5000, max(1, n_train // 10))


def carve_validation(train: ImageDataset, val_size: int) -> tuple[ImageDataset, ImageDataset]:
    if not 0 < val_size < len(train):
        raise AutopruneError(f"val_size must be in [1, {len(train) - 1}] for this data set, got {val_size}")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(train))
    return train.subset(order[val_size:]), train.subset(np.sort(order[:val_size]))


def load_splits(name: str, data_dir: str | os.PathLike | None = None, val_size: int | None = None) -> DataSplits:
    """Load a data set and carve the validation split from its training images."""
    full_train = load_dataset(name, data_dir, "train")
    test = load_dataset(name, data_dir, "test")
    if test.classes != full_train.classes:
        raise AutopruneError(f"train and test splits of {name} have different classes")
    val_size = default_val_size(len(full_train)) if val_size is None else val_size
    train, val = carve_validation(full_train, val_size)
    return DataSplits(train, val, test, val_size)
