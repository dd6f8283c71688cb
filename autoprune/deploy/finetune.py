"""Recover a pruned model's accuracy: fine-tuning, optionally distilling from the unpruned model.

Distillation is Hinton et al.'s ("Distilling the Knowledge in a Neural Network", 2015): the student
matches the teacher's temperature-softened outputs as well as the labels. The learning rate follows
a cosine decay without restarts (Loshchilov & Hutter, "SGDR", ICLR 2017), the usual recipe for
recovering pruned networks (e.g. He et al., AMC, ECCV 2018).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn

from autoprune.data import BatchLoader, DataSplits
from autoprune.errors import AutopruneError
from autoprune.training import TrainConfig, TrainResult, evaluate, fit, recalibrate_bn

RECALIBRATION_BATCHES = 20


@dataclass
class FinetuneResult:
    val_before: float  # validation accuracy before fine-tuning (after BN recalibration)
    val_after: float  # validation accuracy of the returned weights
    kept_initial: bool  # no epoch beat the starting weights, so they were kept
    config: TrainConfig
    train: TrainResult
    distilled: bool

    def summary(self) -> dict[str, Any]:
        """Plain values for a model file's metadata."""
        return {"epochs": self.config.epochs, "lr": self.config.lr, "schedule": self.config.schedule,
                "distill": self.distilled, "val_before": self.val_before, "val_after": self.val_after,
                "kept_initial": self.kept_initial, "seconds": self.train.seconds, "config": asdict(self.config),
                "history": self.train.history}


def finetune(
    model: nn.Module,
    splits: DataSplits,
    epochs: int,
    teacher: nn.Module | None = None,
    lr: float = 0.01,
    batch_size: int = 128,
    weight_decay: float = 5e-4,
    temperature: float = 4.0,
    alpha: float = 0.9,
    seed: int = 0,
    recalibrate: bool = True,
    max_batches_per_epoch: int | None = None,
    precision: str = "fp32",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` in place on ``splits.train``; with ``teacher``, distil from it (weight ``alpha``).

    The returned weights are the best on the validation split, and never worse there than the starting
    weights: if no epoch beats them, they are kept. With ``recalibrate`` the BatchNorm statistics are
    re-estimated first, so the starting accuracy is that of the pruned model, not of stale statistics.
    """
    config = TrainConfig(epochs=epochs, batch_size=min(batch_size, len(splits.train)), lr=lr, weight_decay=weight_decay,
                         schedule="cosine", seed=seed, distill_temperature=temperature, distill_alpha=alpha,
                         max_batches_per_epoch=max_batches_per_epoch, precision=precision)
    if teacher is not None:
        _check_teacher(model, teacher, splits)
    if recalibrate:
        calib = BatchLoader(splits.train, config.batch_size, shuffle=True, seed=seed, max_batches=RECALIBRATION_BATCHES)
        recalibrate_bn(model, (x for x, _ in calib))
    initial = copy.deepcopy(model.state_dict())
    val_before = evaluate(model, splits.val)
    result = fit(model, splits, config, teacher=teacher, progress=progress, log=log)
    kept_initial = result.best_val_accuracy < val_before
    if kept_initial:
        model.load_state_dict(initial)
    return FinetuneResult(val_before, max(val_before, result.best_val_accuracy), kept_initial, config, result,
                          teacher is not None)


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
