"""Data sets held in memory as uint8 tensors, split into train / val (carved from train) / test.

``load_splits(name, data_dir)`` is the entry point. Names:

- ``digits``: the embedded default -- scikit-learn's 1,797 handwritten digits (shipped inside the
  package, no download), upsampled to 3x16x16.
- ``cifar10`` / ``cifar100``: torchvision's binary format (downloaded when missing and the network
  allows) or an ImageFolder tree with ``train/`` and ``test/`` sub-folders.
- ``imagefolder``: any ``DIR/train/<class>/*`` + ``DIR/test/<class>/*`` tree.

The validation split is carved from the training set with a fixed seed, so every command (training,
search, pruning) agrees on which images the reward proxy may see; the test split is used only for
final numbers.
"""

from autoprune.data.datasets import DATASETS, ImageDataset, load_dataset
from autoprune.data.loader import BatchLoader
from autoprune.data.splits import DataSplits, load_splits

__all__ = ["BatchLoader", "DATASETS", "DataSplits", "ImageDataset", "load_dataset", "load_splits"]
