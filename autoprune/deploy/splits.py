"""The data splits a saved model belongs to, defaulting to what its file records."""

from __future__ import annotations

from typing import Any

from autoprune.data import DataSplits, load_splits
from autoprune.errors import AutopruneError


def splits_for_model(payload: dict[str, Any], data: str | None = None, data_dir: str | None = None,
                     val_size: int | None = None, source: str = "the model") -> DataSplits:
    """Load the model's data set (``data`` or the one in its metadata) with the validation split it was trained with.

    Using the recorded validation size keeps the validation images out of fine-tuning, as they were
    out of training. Fails clearly where the data do not fit the model (classes, image shape).
    """
    meta = payload.get("meta", {})
    name = data or meta.get("dataset")
    if not name:
        raise AutopruneError(f"{source} does not record its data set; pass --data (and --data-dir)")
    if val_size is None and name == meta.get("dataset"):
        val_size = meta.get("val_size")
    splits = load_splits(name, data_dir, val_size)
    if splits.num_classes != payload["num_classes"]:
        raise AutopruneError(f"{source} has {payload['num_classes']} classes but {name} has {splits.num_classes}; "
                             "pass the --data it was trained on")
    shape = meta.get("input_shape")
    if shape is not None and tuple(shape) != tuple(splits.input_shape):
        raise AutopruneError(f"{source} takes {tuple(shape)} inputs but {name} images are {tuple(splits.input_shape)}; "
                             "pass the --data it was trained on")
    return splits
