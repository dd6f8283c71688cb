"""Readers that turn each supported format into an in-memory ``ImageDataset``."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoprune.errors import AutopruneError
from autoprune.registry import Registry
from autoprune.utils import atomic_path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff"}
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass
class ImageDataset:
    """Images as a uint8 tensor (N, C, H, W) with integer labels and normalisation constants."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool = True  # whether horizontal flips are a valid augmentation (not for digits)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise AutopruneError("images must be a uint8 tensor of shape (N, C, H, W)")
        if len(self.images) != len(self.labels):
            raise AutopruneError("images and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor | np.ndarray) -> ImageDataset:
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageDataset(self.name, self.images[index], self.labels[index], self.classes, self.mean, self.std, self.flip)


Reader = Callable[[str | None, str], ImageDataset]
DATASETS: Registry[Reader] = Registry("data set")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, split: str = "train") -> ImageDataset:
    """Load the ``train`` or ``test`` split of a data set by name."""
    if split not in ("train", "test"):
        raise AutopruneError(f"split must be 'train' or 'test', got {split!r}")
    return DATASETS.get(name)(None if data_dir is None else str(data_dir), split)


@DATASETS.register("digits")
def _digits(data_dir: str | None, split: str) -> ImageDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8)  # (N, 8, 8)
    images = images[:, None].repeat_interleave(2, 2).repeat_interleave(2, 3).repeat(1, 3, 1, 1)
    labels = torch.from_numpy(digits.target).long()
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(labels)))
    n_test = len(labels) // 5
    index = order[:n_test] if split == "test" else order[n_test:]
    classes = [str(i) for i in range(10)]
    mean, std = (0.19,) * 3, (0.32,) * 3
    return ImageDataset("digits", images[index], labels[index], classes, mean, std, flip=False)


def _cifar(name: str, num_classes: int) -> Reader:
    def read(data_dir: str | None, split: str) -> ImageDataset:
        if data_dir is None:
            raise AutopruneError(f"{name} needs --data-dir (a torchvision CIFAR root or an ImageFolder tree)")
        root = Path(data_dir)
        if (root / split).is_dir():
            ds = read_image_folder(root / split, name=name)
        else:
            ds = _torchvision_cifar(name, root, split)
        if ds.num_classes != num_classes:
            raise AutopruneError(f"{root} holds {ds.num_classes} classes, {name} has {num_classes}")
        ds.mean, ds.std = CIFAR_MEAN, CIFAR_STD
        return ds

    return read


DATASETS.register("cifar10")(_cifar("cifar10", 10))
DATASETS.register("cifar100")(_cifar("cifar100", 100))


@DATASETS.register("imagefolder")
def _imagefolder(data_dir: str | None, split: str) -> ImageDataset:
    if data_dir is None:
        raise AutopruneError("imagefolder needs --data-dir with train/ and test/ sub-folders")
    return read_image_folder(Path(data_dir) / split, name="imagefolder")


def _torchvision_cifar(name: str, root: Path, split: str) -> ImageDataset:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    train = split == "train"
    try:
        ds = cls(str(root), train=train, download=False)
    except RuntimeError:
        try:  # not on disk: the real download path, which needs the network
            ds = cls(str(root), train=train, download=True)
        except Exception as exc:  # noqa: BLE001 -- any network/IO failure becomes one clear line
            raise AutopruneError(
                f"no {name} under {root} (expected {split}/<class>/ images or torchvision's files) "
                f"and downloading it failed: {exc.__class__.__name__}"
            ) from None
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    return ImageDataset(name, images, torch.tensor(ds.targets), list(ds.classes), CIFAR_MEAN, CIFAR_STD)


def cache_dir() -> Path:
    """Where decoded image arrays are cached (``$AUTOPRUNE_CACHE`` or ``~/.cache/autoprune``)."""
    return Path(os.environ.get("AUTOPRUNE_CACHE", Path.home() / ".cache" / "autoprune"))


def read_image_folder(folder: Path, name: str = "imagefolder") -> ImageDataset:
    """Decode ``folder/<class>/<image>`` into memory, caching the decoded arrays on disk."""
    if not folder.is_dir():
        raise AutopruneError(f"data folder {folder} does not exist")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    files = [
        (sorted(p for p in (folder / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), i)
        for i, c in enumerate(classes)
    ]
    paths = [(p, label) for group, label in files for p in group]
    if not paths:
        raise AutopruneError(f"no images found in {folder} (expected {folder}/<class>/<image>.jpg)")
    place = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:8]
    key = _folder_fingerprint(folder, [p for p, _ in paths])
    cache = cache_dir() / f"{name}-{folder.name}-{place}-{key}.npz"
    if cache.exists():
        try:
            with np.load(cache) as z:
                images, labels = z["images"], z["labels"]
            return ImageDataset(name, torch.from_numpy(images), torch.from_numpy(labels).long(), classes, (0.5,) * 3, (0.25,) * 3)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    images, labels = _decode(paths)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, images=images, labels=labels)
    for stale in cache.parent.glob(f"{name}-{folder.name}-{place}-*.npz"):
        if stale != cache:  # the same folder, decoded before its files changed
            stale.unlink(missing_ok=True)
    return ImageDataset(name, torch.from_numpy(images), torch.from_numpy(labels).long(), classes, (0.5,) * 3, (0.25,) * 3)


def _folder_fingerprint(folder: Path, paths: list[Path]) -> str:
    h = hashlib.sha1(str(folder.resolve()).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _decode(paths: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from tqdm import tqdm

    first = Image.open(paths[0][0]).convert("RGB")
    size = first.size
    images = np.empty((len(paths), 3, size[1], size[0]), dtype=np.uint8)
    labels = np.empty(len(paths), dtype=np.int64)
    for i, (p, label) in enumerate(tqdm(paths, desc=f"decoding {paths[0][0].parent.parent.name}", unit="img", leave=False, mininterval=1)):
        try:
            img = Image.open(p).convert("RGB")
        except OSError as exc:
            raise AutopruneError(f"cannot read image {p}: {exc}") from None
        if img.size != size:
            img = img.resize(size)
        images[i] = np.asarray(img).transpose(2, 0, 1)
        labels[i] = label
    return images, labels
