"""Recovering a pruned model's accuracy: BN calibration and fine-tuning, one recipe for every command.

``prune --finetune-epochs``, ``finetune`` and ``evaluate`` all go through ``finetune`` with a
``FinetuneRecipe``, and every BatchNorm re-estimation outside the search's proxy takes its batches
from ``calibration_batches``, so the three commands recover a model the same way.

The default recipe -- SGD with Nesterov momentum, a one-cycle schedule to lr 0.05, batch 128,
distilling from the unpruned model -- was the best of those measured on ResNet-20 (docs/RESULTS.md,
"Fine-tune recipe").
Distillation is Hinton et al.'s ("Distilling the Knowledge in a Neural Network", 2015): the student
matches the teacher's temperature-softened outputs as well as the labels.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from autoprune.data import BatchLoader, DataSplits, ImageDataset
from autoprune.errors import AutopruneError
from autoprune.training import TrainConfig, TrainResult, evaluate, fit, recalibrate_bn

CALIBRATION_BATCHES = 20  # training batches of 128 that re-estimate BN statistics of a pruned model


def calibration_batches(train: ImageDataset, batches: int = CALIBRATION_BATCHES, batch_size: int = 128,
                        seed: int = 0) -> list[torch.Tensor]:
    """Images of ``batches`` shuffled training batches (fixed by ``seed``) for BN re-estimation."""
    loader = BatchLoader(train, min(batch_size, len(train)), shuffle=True, seed=seed, max_batches=batches)
    return [x for x, _ in loader]


def reconstruction_batches(splits: DataSplits, images: int) -> list[torch.Tensor] | None:
    """``images`` training images drawn once with a fixed seed (batches of up to 128) for least-squares
    reconstruction; None for 0."""
    if images <= 0:
        return None
    order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0))[:images]
    return [x for x, _ in BatchLoader(splits.train.subset(order), 128)]


@dataclass(frozen=True)
class FinetuneRecipe:
    """How a pruned model is fine-tuned: the same for ``prune``, ``finetune`` and ``evaluate``."""

    epochs: int = 1
    lr: float = 0.05  # peak learning rate (one-cycle) or initial one (cosine)
    schedule: str = "onecycle"
    batch_size: int = 128
    weight_decay: float = 5e-4
    distill: bool = True  # distil from the unpruned model (needs a teacher)
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the distillation term
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise AutopruneError(f"fine-tune epochs must be >= 0, got {self.epochs}")
        if self.epochs:  # the training settings it will run with, checked now rather than after the data loads
            self.train_config(seed=0, train_images=max(self.batch_size, 1))

    def replace(self, **changes: Any) -> FinetuneRecipe:
        """A copy with ``changes``; None values keep the recipe's own (for optional CLI flags)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def train_config(self, seed: int, train_images: int, max_batches_per_epoch: int | None = None) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=min(self.batch_size, train_images), lr=self.lr,
                           weight_decay=self.weight_decay, schedule=self.schedule, seed=seed,
                           distill_temperature=self.temperature, distill_alpha=self.alpha,
                           max_batches_per_epoch=max_batches_per_epoch, precision=self.precision)


@dataclass
class FinetuneResult:
    val_before: float  # validation accuracy before fine-tuning (after BN recalibration)
    val_after: float  # validation accuracy of the returned weights
    kept_initial: bool  # no epoch beat the starting weights, so they were kept
    recipe: FinetuneRecipe
    config: TrainConfig
    train: TrainResult

    def summary(self) -> dict[str, Any]:
        """Plain values for a model file's metadata."""
        return {"epochs": self.recipe.epochs, "lr": self.recipe.lr, "schedule": self.recipe.schedule,
                "distill": self.recipe.distill, "val_before": self.val_before, "val_after": self.val_after,
                "kept_initial": self.kept_initial, "seconds": self.train.seconds, "recipe": asdict(self.recipe),
                "config": asdict(self.config), "history": self.train.history}


def finetune(
    model: nn.Module,
    splits: DataSplits,
    recipe: FinetuneRecipe,
    teacher: nn.Module | None = None,
    seed: int = 0,
    recalibrate: bool = True,
    max_batches_per_epoch: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` in place on ``splits.train`` following ``recipe`` (distilling from ``teacher``
    when ``recipe.distill``).

    The returned weights are the best on the validation split, and never worse there than the starting
    weights: if no epoch beats them, they are kept. With ``recalibrate`` the BatchNorm statistics are
    re-estimated first, so the starting accuracy is that of the pruned model, not of stale statistics.
    """
    if recipe.distill and teacher is None:
        raise AutopruneError("the recipe distils from the unpruned model but none was given: pass it as the "
                             "teacher (--teacher BASE.pt), or turn distillation off (--no-distill)")
    if not recipe.distill:
        teacher = None
    config = recipe.train_config(seed, len(splits.train), max_batches_per_epoch)
    if teacher is not None:
        _check_teacher(model, teacher, splits)
    if recalibrate:
        recalibrate_bn(model, calibration_batches(splits.train, seed=seed))
    initial = copy.deepcopy(model.state_dict())
    val_before = evaluate(model, splits.val)
    result = fit(model, splits, config, teacher=teacher, progress=progress, log=log)
    kept_initial = result.best_val_accuracy < val_before
    if kept_initial:
        model.load_state_dict(initial)
    return FinetuneResult(val_before, max(val_before, result.best_val_accuracy), kept_initial, recipe, config, result)


def finetuned_test_accuracy(job: tuple[nn.Module, int], splits: DataSplits, recipe: FinetuneRecipe,
                            teacher: nn.Module | None = None) -> float:
    """Test accuracy of a copy of ``pruned`` after ``finetune`` with ``seed``; ``job = (pruned, seed)``
    so that independent fine-tunes can be mapped over workers."""
    pruned, seed = job
    tuned = copy.deepcopy(pruned)
    finetune(tuned, splits, recipe, teacher=teacher, seed=seed, progress=False, log=lambda line: None)
    return evaluate(tuned, splits.test)


def finetuned_accuracies(pruned: nn.Module, splits: DataSplits, recipe: FinetuneRecipe, seeds: Sequence[int],
                         teacher: nn.Module | None = None) -> dict[str, Any]:
    """Test accuracy after ``finetune`` once per seed, each on a copy of ``pruned`` (see ``summarize``)."""
    return summarize([finetuned_test_accuracy((pruned, s), splits, recipe, teacher) for s in seeds])


def summarize(accuracies: Sequence[float]) -> dict[str, Any]:
    """The row fields of fine-tuned accuracies over seeds: ``finetuned_test_accuracy`` (mean), ``..._std``
    (sample standard deviation; None for one seed) and ``finetuned_test_accuracies`` (the single runs)."""
    accuracies = [float(a) for a in accuracies]
    return {"finetuned_test_accuracy": float(np.mean(accuracies)),
            "finetuned_test_accuracy_std": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else None,
            "finetuned_test_accuracies": accuracies}


def _check_teacher(model: nn.Module, teacher: nn.Module, splits: DataSplits) -> None:
    x = torch.zeros(2, *splits.input_shape)
    was_training = model.training
    model.eval()
    teacher.eval()
    try:
        with torch.inference_mode():
            student_shape, teacher_shape = tuple(model(x).shape), tuple(teacher(x).shape)
    except RuntimeError as exc:
        raise AutopruneError(f"the teacher does not accept {tuple(splits.input_shape)} inputs "
                             f"({str(exc).splitlines()[0][:120]}); pass the model the pruned one came from") from None
    finally:
        model.train(was_training)
    if student_shape != teacher_shape:
        raise AutopruneError(f"the teacher has {teacher_shape[1]} outputs and the model {student_shape[1]}; "
                             "pass the model the pruned one came from as the teacher")
