"""Batches from an in-memory data set, with augmentation done on whole batches (no worker processes)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from autoprune.data.datasets import ImageDataset


class BatchLoader:
    """Iterates ``(images, labels)`` float batches, normalised and in ``channels_last`` memory format.

    Augmentation (``augment=True``) is the standard CIFAR recipe: random crop after zero padding by
    1/8 of the side, and a horizontal flip where the data set allows it.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int = 128,
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        max_batches: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.max_batches = max_batches
        self.generator = torch.Generator().manual_seed(seed)
        self._mean = torch.tensor(dataset.mean).view(1, -1, 1, 1) * 255
        self._std = torch.tensor(dataset.std).view(1, -1, 1, 1) * 255

    def __len__(self) -> int:
        n = len(self.dataset)
        batches = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return batches if self.max_batches is None else min(batches, self.max_batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            images = self.dataset.images[index]
            if self.augment:
                images = self._augment(images)
            x = (images.float() - self._mean) / self._std
            yield x.contiguous(memory_format=torch.channels_last), self.dataset.labels[index]

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        pad = max(1, h // 8)
        padded = F.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=self.generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=self.generator)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (b, h, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (b, 1, w)
        if self.dataset.flip:
            flip = torch.rand(b, generator=self.generator) < 0.5
            cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
        out = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols]  # (b, h, w, c)
        return out.permute(0, 3, 1, 2)
