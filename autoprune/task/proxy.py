"""The accuracy proxy: how well a pruned model does on the held-out validation split of the training
set, once it has been given a cheap repair -- least-squares reconstruction (the default), adaptive BN
(BN statistics re-estimated on a few fixed training batches), a few SGD or distillation steps: a
stand-in for the recovery fine-tune whose result the search is really after.

Proxy variants are registered by name (``PROXIES``; ``create_proxy``, ``list_proxies``; the
``proxy`` setting picks one):

============== ======================================================================================
name           scores the pruned model ...
============== ======================================================================================
bn             after adaptive BN (plus ``finetune_steps`` cross-entropy SGD steps when > 0)
recon          built with least-squares reconstruction (``autoprune.pruning.reconstruct``, on
               ``reconstruct_images`` training images, 256 by default) and scored as built: the refit
               reproduces the base model's pre-BN outputs, so its BN statistics are kept (no adaptive
               BN). The default: with the ``kl`` measure it ranks competitive strategies like the
               fine-tune best of the variants measured (docs/RESULTS.md, the fidelity benchmark)
recon-bn       built with least-squares reconstruction, then adaptive BN
distill        after adaptive BN, ``finetune_steps`` (default 200) SGD steps of distillation towards the
               base model's logits (KL at temperature 4, ``autoprune.training.distillation_loss``) on
               fixed augmented training batches, and adaptive BN again for the adapted weights
recon-distill  reconstruction, then as ``distill``
============== ======================================================================================

What the proxy reports of the scored model's predictions on the validation images is its *measure*
(``MEASURES``; the ``proxy_measure`` setting picks one, for every variant):

============== ======================================================================================
measure        the score in [0, 1] is ...
============== ======================================================================================
accuracy       top-1 accuracy
soft           the mean probability given to the true label: accuracy without its rounding to 0 or 1
               per image, so strategies a few images apart still rank by how sure they are
kl             exp(-KL(base || pruned)) of the softmax outputs, mean KL over the images: how much of
               the base model's function survives, the thing the distilling fine-tune restores; the
               default
============== ======================================================================================

Every variant is deterministic for a strategy: the same calibration, training and validation images,
in the same order, score every strategy, so scores are comparable and cacheable.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.data import BatchLoader, DataSplits
from autoprune.errors import AutopruneError
from autoprune.recovery import calibration_batches, reconstruction_batches
from autoprune.registry import Registry
from autoprune.training import distillation_loss, recalibrate_bn

MIN_PROXY_IMAGES = 20
RECONSTRUCT_IMAGES = 256  # calibration images of the recon proxies when none are given
DISTILL_STEPS = 200  # distillation steps of the distill proxies when none are given
DISTILL_TEMPERATURE = 4.0


@dataclass
class ProxyResult:
    accuracy: float  # in [0, 1]
    cached: bool


PROXIES: Registry[type[AccuracyProxy]] = Registry("proxy")
# (pruned model's logits, labels, base model's logits) over the validation images -> score in [0, 1]
MEASURES: Registry[Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], float]] = Registry("proxy measure")
TEACHER_MEASURES = ("kl",)  # the measures that compare with the base model's logits


@MEASURES.register("accuracy")
def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None = None) -> float:
    return (logits.argmax(1) == labels).sum().item() / len(labels)


@MEASURES.register("soft")
def soft_accuracy(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None = None) -> float:
    return logits.float().softmax(1).gather(1, labels[:, None]).mean().item()


@MEASURES.register("kl")
def kept_function(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None = None) -> float:
    assert teacher is not None, "the kl measure needs the base model's logits"
    kl = F.kl_div(logits.float().log_softmax(1), teacher.float().log_softmax(1), reduction="batchmean", log_target=True)
    return float(torch.exp(-kl.clamp(min=0)).item())


def create_proxy(name: str, splits: DataSplits, **options: Any) -> AccuracyProxy:
    """The proxy registered as ``name`` (see ``PROXIES``); ``options`` are ``AccuracyProxy``'s arguments
    (``teacher``, the base model, is needed by the ``distill`` variants and the ``kl`` measure)."""
    return PROXIES.get(name)(splits, **options)


def list_proxies() -> list[str]:
    return PROXIES.names()


@PROXIES.register("bn")
class AccuracyProxy:
    """Scores pruned models; results are cached by the strategy's kept-channel counts.

    :param splits: the data: validation images to score on, training images to calibrate and adapt on.
    :param num_images: validation images scored, at most (None: all of the split).
    :param finetune_steps: SGD steps before scoring (``bn``: cross-entropy, 0 by default; ``distill``:
        distillation, 0 means ``DISTILL_STEPS``).
    :param reconstruct_images: calibration images of the least-squares reconstruction of the ``recon``
        variants (0: ``RECONSTRUCT_IMAGES``); ignored by the others.
    :param teacher: the base model, for the ``distill`` variants and the ``kl`` measure (never modified).
    :param measure: what is reported of the validation predictions (``MEASURES``): ``accuracy``,
        ``soft`` or ``kl``.
    """

    name = "bn"
    reconstructs = False  # scores the strategy's model built with least-squares reconstruction
    distills = False  # needs the base model as teacher
    recalibrates = True  # re-estimates the BN statistics before scoring (when ``adaptive_bn``)

    def __init__(self, splits: DataSplits, num_images: int | None = None, adaptive_bn: bool = True,
                 calib_batches: int = 4, batch_size: int = 256, cache_size: int = 20000, finetune_steps: int = 0,
                 finetune_lr: float = 0.01, finetune_batch_size: int = 64, reconstruct_images: int = 0,
                 teacher: nn.Module | None = None, measure: str = "accuracy") -> None:
        n_val = len(splits.val)
        # an upper bound, so that the default fits any data set; `num_images` records what is scored
        num_images = n_val if num_images is None else min(num_images, n_val)
        if num_images < MIN_PROXY_IMAGES:
            raise AutopruneError(f"the validation split for the proxy is too small ({num_images} images); "
                                 f"use at least {MIN_PROXY_IMAGES}")
        val = splits.val.subset(torch.arange(num_images))
        self.num_images = num_images
        # Fixed batches: the same images score every strategy, so differences come from the strategy.
        self.val_batches = list(BatchLoader(val, batch_size))
        self.adaptive_bn = adaptive_bn and self.recalibrates
        self.calib_batches = calibration_batches(splits.train, calib_batches, batch_size, seed=0) if self.adaptive_bn else []
        if finetune_steps < 0:
            raise AutopruneError(f"finetune_steps must be >= 0, got {finetune_steps}")
        if reconstruct_images < 0:
            raise AutopruneError(f"reconstruct_images must be >= 0, got {reconstruct_images}")
        self.finetune_steps, self.finetune_lr, self.finetune_batch_size = finetune_steps, finetune_lr, finetune_batch_size
        self._train = splits.train
        self.measure_name, self.measure = measure, MEASURES.get(measure)
        needs_teacher = self.distills or measure in TEACHER_MEASURES
        if needs_teacher and teacher is None:
            what = f"the {self.name} proxy distils from" if self.distills else f"the {measure} measure compares with"
            raise AutopruneError(f"{what} the base model: pass it as teacher=")
        self.teacher = teacher if needs_teacher else None
        self._val_teacher_logits: torch.Tensor | None = None  # the base model's, computed once
        # the calibration batches the strategy's model is built with (PruningSpace.apply(reconstruct=...));
        # None: whatever the task builds (reconstructed only where the `reconstruct` setting asks)
        self.reconstruction: list[torch.Tensor] | None = None
        if self.reconstructs:
            self.reconstruction = reconstruction_batches(splits, reconstruct_images or RECONSTRUCT_IMAGES)
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
        """The measure in [0, 1] of ``model`` (built as ``reconstruction`` says; adapted in place and left
        in eval mode)."""
        model = model.to(memory_format=torch.channels_last)
        if self.adaptive_bn:
            recalibrate_bn(model, self.calib_batches)
        if self.finetune_steps:
            self._adapt(model)
        labels = torch.cat([y for _, y in self.val_batches])
        return self.measure(self._val_logits(model.eval()), labels, self._teacher_val_logits())

    def _val_logits(self, model: nn.Module) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([model(x).float() for x, _ in self.val_batches])

    def _teacher_val_logits(self) -> torch.Tensor | None:
        if self.measure_name in TEACHER_MEASURES and self._val_teacher_logits is None:
            assert self.teacher is not None
            was_training = self.teacher.training  # the base model is shared: its mode is left as found
            self._val_teacher_logits = self._val_logits(self.teacher.eval())
            self.teacher.train(was_training)
        return self._val_teacher_logits

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


@PROXIES.register("recon-bn")
class ReconstructedProxy(AccuracyProxy):
    """``bn`` on the model built with least-squares reconstruction."""

    reconstructs = True


@PROXIES.register("recon")
class ReconstructionProxy(ReconstructedProxy):
    """The model built with least-squares reconstruction, scored as built.

    The refit makes every refitted layer reproduce the base model's outputs before its BatchNorm, so
    the base model's BN statistics are the right ones for it. Re-estimating them on the pruned model
    (adaptive BN, ``recon-bn``) undoes part of the match: on ResNet-20 it costs 2.6-3.4 points of test
    accuracy before fine-tuning, and it ranks competitive strategies worse (docs/RESULTS.md, the
    fidelity benchmark). ``adaptive_bn`` is therefore ignored.
    """

    recalibrates = False


@PROXIES.register("distill")
class DistillationProxy(AccuracyProxy):
    """Adaptive BN, then ``finetune_steps`` SGD steps distilling the base model's logits on fixed
    augmented training batches (the teacher's logits computed once), then adaptive BN again."""

    distills = True

    def __init__(self, splits: DataSplits, *args: Any, **kwargs: Any) -> None:
        super().__init__(splits, *args, **kwargs)
        self.finetune_steps = self.finetune_steps or DISTILL_STEPS
        self.temperature = DISTILL_TEMPERATURE
        self._teacher_logits: list[torch.Tensor] = []

    def _batches(self) -> Iterator[torch.Tensor]:
        """The images of ``finetune_steps`` augmented training batches, the same on every call (one
        loader with a fixed seed, over as many epochs as the steps need)."""
        batch_size = min(self.finetune_batch_size, len(self._train))
        loader = BatchLoader(self._train, batch_size, shuffle=True, augment=True, drop_last=True, seed=1)
        step = 0
        while True:
            for x, _ in loader:
                if step == self.finetune_steps:
                    return
                yield x
                step += 1

    def _targets(self, step: int, x: torch.Tensor) -> torch.Tensor:
        if step == len(self._teacher_logits):  # first pass: the teacher's logits, kept for every later strategy
            assert self.teacher is not None
            was_training = self.teacher.training
            self.teacher.eval()
            with torch.no_grad():
                self._teacher_logits.append(self.teacher(x).float())
            self.teacher.train(was_training)
        return self._teacher_logits[step]

    def _adapt(self, model: nn.Module) -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=self.finetune_lr, momentum=0.9)
        model.train()
        with torch.enable_grad():
            for step, x in enumerate(self._batches()):
                loss = distillation_loss(model(x), self._targets(step, x), self.temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        if self.adaptive_bn:  # statistics of the adapted weights on the (unaugmented) calibration batches
            recalibrate_bn(model, self.calib_batches)


@PROXIES.register("recon-distill")
class ReconstructedDistillationProxy(DistillationProxy):
    """``distill`` on the model built with least-squares reconstruction."""

    reconstructs = True
