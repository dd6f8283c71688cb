"""The accuracy proxy: accuracy of a pruned model on the held-out validation split of the training set,
after adaptive BN (BN statistics re-estimated on a few fixed training batches) and, optionally, a few
SGD steps on training batches (``finetune_steps``): a cheap stand-in for the recovery fine-tune whose
result the search is really after."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.data import BatchLoader, DataSplits
from autoprune.errors import AutopruneError
from autoprune.recovery import calibration_batches
from autoprune.training import recalibrate_bn

MIN_PROXY_IMAGES = 20


@dataclass
class ProxyResult:
    accuracy: float  # in [0, 1]
    cached: bool


class AccuracyProxy:
    """Scores pruned models; results are cached by the strategy's kept-channel counts."""

    def __init__(self, splits: DataSplits, num_images: int | None = None, adaptive_bn: bool = True,
                 calib_batches: int = 4, batch_size: int = 256, cache_size: int = 20000, finetune_steps: int = 0,
                 finetune_lr: float = 0.01, finetune_batch_size: int = 64) -> None:
        n_val = len(splits.val)
        num_images = n_val if num_images is None else num_images
        if num_images > n_val:
            raise AutopruneError(f"proxy_images={num_images} but the validation split holds only {n_val} images; "
                                 "use a larger --val-size or fewer proxy images")
        if num_images < MIN_PROXY_IMAGES:
            raise AutopruneError(f"the validation split for the proxy is too small ({num_images} images); "
                                 f"use at least {MIN_PROXY_IMAGES}")
        val = splits.val.subset(torch.arange(num_images))
        self.num_images = num_images
        # Fixed batches: the same images score every strategy, so differences come from the strategy.
        self.val_batches = list(BatchLoader(val, batch_size))
        self.calib_batches = calibration_batches(splits.train, calib_batches, batch_size, seed=0) if adaptive_bn else []
        self.adaptive_bn = adaptive_bn
        if finetune_steps < 0:
            raise AutopruneError(f"finetune_steps must be >= 0, got {finetune_steps}")
        self.finetune_steps, self.finetune_lr, self.finetune_batch_size = finetune_steps, finetune_lr, finetune_batch_size
        self._train = splits.train
        self.cache: OrderedDict[tuple[int, ...], float] = OrderedDict()
        self.cache_size = cache_size
        self.forward_seconds_total = 0.0  # all forward passes so far (episodes and baselines)

    def __call__(self, key: tuple[int, ...], build: Callable[[], nn.Module]) -> ProxyResult:
        if key in self.cache:
            self.cache.move_to_end(key)
            return ProxyResult(self.cache[key], True)
        model = build()
        t0 = time.perf_counter()
        accuracy = self.score(model)
        seconds = time.perf_counter() - t0
        self.forward_seconds_total += seconds
        self.cache[key] = accuracy
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return ProxyResult(accuracy, False)

    @torch.inference_mode(False)
    def score(self, model: nn.Module) -> float:
        model = model.to(memory_format=torch.channels_last)
        if self.adaptive_bn:
            recalibrate_bn(model, self.calib_batches)
        if self.finetune_steps:
            self._adapt(model)
        model.eval()
        correct = 0
        with torch.inference_mode():
            for x, y in self.val_batches:
                correct += (model(x).argmax(1) == y).sum().item()
        return correct / self.num_images

    def _adapt(self, model: nn.Module) -> None:
        """``finetune_steps`` SGD steps on augmented training batches; the same batches for every
        strategy (a fresh loader with a fixed seed), so scores stay comparable and cacheable."""
        loader = BatchLoader(self._train, self.finetune_batch_size, shuffle=True, augment=True, drop_last=True, seed=1,
                             max_batches=self.finetune_steps)
        optimizer = torch.optim.SGD(model.parameters(), lr=self.finetune_lr, momentum=0.9)
        model.train()
        with torch.enable_grad():
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
