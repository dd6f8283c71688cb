"""Training, evaluation, fine-tuning with knowledge distillation, and BN recalibration.

One loop serves base training (``autoprune train``) and recovery fine-tuning (``autoprune prune
--finetune-epochs`` / ``autoprune finetune``). Distillation uses Hinton et al.'s loss (2015): the KL
divergence between temperature-softened teacher and student outputs, scaled by T^2. Stochastic weight
averaging (Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization", 2018)
optionally follows the main schedule: a constant learning rate, the weights averaged once per epoch,
then BatchNorm statistics re-estimated for the averaged weights. ``sparsity="bn-l1"`` adds an L1 penalty on
the BatchNorm scales (network slimming, optionally with per-layer dynamic thresholds; see
``autoprune.sparsity``) to prepare a network for channel pruning.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from autoprune.data import BatchLoader, DataSplits, ImageDataset
from autoprune.errors import AutopruneError
from autoprune.sparsity import SparsityRegularizer, check_method, summarize, summary_line
from autoprune.utils import atomic_path, hms, load_tensors

SCHEDULES = ("onecycle", "cosine")
DEVICES = ("cpu", "cuda", "auto")
_training_device = torch.device("cpu")


def set_training_device(name: str) -> torch.device:
    """Where training steps (``train``, every fine-tune) run from now on in this process: ``cpu``,
    ``cuda`` or ``auto`` (cuda when available). Scoring, pruning and search stay on the CPU; a model
    trained on an accelerator is handed back on the CPU."""
    global _training_device
    if name not in DEVICES:
        raise AutopruneError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise AutopruneError("--device cuda: no CUDA device is available here; use --device cpu (or auto)")
    _training_device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                                    ("cpu" if name == "auto" else name))
    return _training_device


def training_device() -> torch.device:
    return _training_device


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device

# "bf16" runs forward and backward under CPU autocast (convs and matmuls in bfloat16, weights and the
# optimizer in float32): about 1.6x faster per step on CPUs with AVX512-BF16 or AMX, possibly slower on CPUs with neither.
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.15  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    seed: int = 0
    distill_temperature: float = 4.0
    distill_alpha: float = 0.9  # weight of the distillation term when a teacher is given
    max_batches_per_epoch: int | None = None  # cap for quick runs (tests, demo)
    swa_epochs: int = 0  # epochs of weight averaging after the main schedule (0: off)
    swa_lr: float = 0.05  # constant learning rate during weight averaging
    precision: str = "fp32"  # one of PRECISIONS
    sparsity: str | None = None  # "bn-l1": L1 penalty on BatchNorm scales (network slimming); None: off
    sparsity_lambda: float = 1e-4  # weight of the L1 penalty
    dynamic_thresholds: bool = False  # penalise only channels below per-layer thresholds (autoprune.sparsity)

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise AutopruneError(f"epochs must be >= 0, got {self.epochs}")
        if self.swa_epochs < 0:
            raise AutopruneError(f"weight-averaging epochs (--swa-epochs) must be >= 0, got {self.swa_epochs}")
        if self.epochs + self.swa_epochs < 1:
            raise AutopruneError("nothing to train: give --epochs >= 1 or --swa-epochs >= 1")
        if self.swa_lr <= 0:
            raise AutopruneError(f"SWA learning rate must be > 0, got {self.swa_lr}")
        if self.batch_size < 1:
            raise AutopruneError(f"batch size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise AutopruneError(f"learning rate must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise AutopruneError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not 0 <= self.distill_alpha <= 1:
            raise AutopruneError(f"the distillation weight (--alpha) must be in [0, 1], got {self.distill_alpha}")
        if not (self.distill_temperature > 0 and math.isfinite(self.distill_temperature)):
            raise AutopruneError(f"the distillation temperature must be > 0, got {self.distill_temperature}")
        if not 0 <= self.label_smoothing < 1:
            raise AutopruneError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.precision not in PRECISIONS:
            raise AutopruneError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.sparsity is not None:
            check_method(self.sparsity)
        if not (self.sparsity_lambda >= 0 and math.isfinite(self.sparsity_lambda)):
            raise AutopruneError(f"the sparsity penalty lambda must be a finite number >= 0, got {self.sparsity_lambda}")
        if self.dynamic_thresholds and self.sparsity is None:
            raise AutopruneError("dynamic thresholds need a sparsity method: give --sparsity bn-l1 as well")


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_accuracy: float = 0.0
    seconds: float = 0.0
    # with TrainConfig.sparsity: the regularizer's settings and per-layer scale statistics of the returned weights
    sparsity: dict[str, Any] | None = None


@torch.inference_mode()
def evaluate(model: nn.Module, data: ImageDataset | Iterable, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent."""
    loader = BatchLoader(data, batch_size) if isinstance(data, ImageDataset) else data
    was_training = model.training
    model.eval()
    device = _device_of(model)
    correct = total = 0
    for x, y in loader:
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        total += len(y)
    model.train(was_training)
    return 100.0 * correct / max(total, 1)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Adaptive BN: re-estimate every BatchNorm's running statistics on a few training batches.

    After channels are removed, the stored statistics no longer describe the activations; without
    this step a pruned model's accuracy is a poor estimate of what it recovers to (Li et al., EagleEye 2020).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the given batches
    was_training = model.training
    model.eval()
    for m in bns:
        m.train()
    device = _device_of(model)
    for x in batches:
        model(x.to(device))
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)
    model.train(was_training)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t


def fit(
    model: nn.Module,
    splits: DataSplits,
    config: TrainConfig,
    teacher: nn.Module | None = None,
    resume_path: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``splits.train``; report validation accuracy after every epoch.

    With ``resume_path`` the full training state is saved there after every epoch and, if the file
    exists, training continues from it. The weights with the best validation accuracy are kept.
    The steps run on ``training_device()``; the model (and the teacher) are back on the CPU afterwards.
    """
    log = log or (lambda line: print(line, flush=True))
    torch.manual_seed(config.seed)
    device = training_device()
    model.to(device, memory_format=torch.channels_last)
    loader = BatchLoader(splits.train, config.batch_size, shuffle=True, augment=True, drop_last=True,
                         seed=config.seed, max_batches=config.max_batches_per_epoch)
    if len(loader) == 0:
        raise AutopruneError(f"the training split ({len(splits.train)} images) is smaller than one batch of {config.batch_size}")
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0}],
                                lr=config.lr, momentum=config.momentum, nesterov=True)
    total_steps = max(config.epochs * len(loader), 1)
    if config.schedule == "onecycle" and config.epochs > 0:
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=0.15, div_factor=10, final_div_factor=100)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total_steps)))
    teacher_device = None
    if teacher is not None:
        teacher_device = _device_of(teacher)
        teacher.eval().to(device, memory_format=torch.channels_last)
    regularizer = None
    if config.sparsity is not None:
        regularizer = SparsityRegularizer(config.sparsity, config.sparsity_lambda, config.dynamic_thresholds)
        regularizer.check_model(model)

    result = TrainResult()
    best_state = copy.deepcopy(model.state_dict())
    start_epoch = 0
    swa = _WeightAverage() if config.swa_epochs else None
    if resume_path is not None and Path(resume_path).exists():
        state = load_tensors(resume_path, "resume file")
        if not isinstance(state, dict) or "model" not in state:
            raise AutopruneError(f"resume file {resume_path} is not a training state: delete it to start afresh")
        if not _same_settings(state.get("config"), config):
            raise AutopruneError(f"{resume_path} was written by a run with other settings; delete it or use the same ones")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.generator.set_state(state["loader_rng"])
        torch.set_rng_state(state["torch_rng"])
        best_state, start_epoch = state["best_model"], state["epoch"]
        if swa is not None and state.get("swa") is not None:
            swa.load_state_dict(state["swa"])
        if regularizer is not None and state.get("sparsity") is not None:
            regularizer.load_state_dict(state["sparsity"])
        result.history, result.best_val_accuracy, result.seconds = state["history"], state["best_val_accuracy"], state["seconds"]
        log(f"resuming from {resume_path} at epoch {start_epoch + 1}/{config.epochs + config.swa_epochs}")

    total_epochs = config.epochs + config.swa_epochs
    for epoch in range(start_epoch, total_epochs):
        t0 = time.perf_counter()
        model.train()
        averaging = epoch >= config.epochs
        if averaging:
            for group in optimizer.param_groups:
                group["lr"] = config.swa_lr
        loss_sum = correct = seen = 0.0
        label = "swa " if averaging else ""
        bar = tqdm(loader, desc=f"{label}epoch {epoch + 1}/{total_epochs}", unit="batch", leave=False, disable=not progress, mininterval=1)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                logits = model(x)
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(x)
            logits = logits.float()  # losses in float32 whatever the precision of the forward pass
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            if teacher is not None:
                kd = distillation_loss(logits, teacher_logits.float(), config.distill_temperature)
                loss = (1 - config.distill_alpha) * loss + config.distill_alpha * kd
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if regularizer is not None:
                regularizer.after_backward(model)
            optimizer.step()
            if not averaging:
                scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
        if regularizer is not None:
            regularizer.on_epoch_end(model)  # dynamic thresholds follow each layer's scales
        if averaging:
            assert swa is not None
            swa.update(model)
            candidate = swa.averaged(model, loader)  # averaged weights, BN statistics re-estimated
        else:
            candidate = model
        val_acc = evaluate(candidate, splits.val)
        seconds = time.perf_counter() - t0
        result.seconds += seconds
        lr = config.swa_lr if averaging else scheduler.get_last_lr()[0]
        row: dict[str, Any] = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": 100 * correct / seen,
                               "val_accuracy": val_acc, "lr": lr, "seconds": seconds}
        if averaging:
            row["swa"] = True
        if regularizer is not None:
            stats = regularizer.layer_stats(model)
            row["sparsity"] = {**summarize(stats), "layers": stats}
        result.history.append(row)
        if val_acc >= result.best_val_accuracy:
            result.best_val_accuracy = val_acc
            best_state = copy.deepcopy(candidate.state_dict())
        head = f"{label}epoch {epoch + 1:3d}/{total_epochs}  "
        recent = [r["seconds"] for r in result.history[-3:]]  # the pace of the last epochs, resumed ones included
        eta = f"  ETA {hms(sum(recent) / len(recent) * (total_epochs - epoch - 1))}" if epoch + 1 < total_epochs else ""
        log(f"{head}loss {row['loss']:.4f}  train {row['train_accuracy']:.2f}%  "
            f"val {val_acc:.2f}%  lr {lr:.4f}  {seconds:.0f}s{eta}")
        if regularizer is not None:
            log(" " * len(head) + summary_line(stats))
        if resume_path is not None:
            _save_resume(resume_path, config, model, optimizer, scheduler, loader, best_state, epoch + 1, result,
                         swa.state_dict() if swa is not None else None,
                         regularizer.state_dict() if regularizer is not None else None)
    model.load_state_dict(best_state)
    model.to("cpu")
    if teacher is not None:
        teacher.to(teacher_device)
    if regularizer is not None:
        regularizer.on_epoch_end(model)  # thresholds of the weights returned (the best epoch's)
        result.sparsity = {**regularizer.settings(), "layers": regularizer.layer_stats(model)}
    return result


def _same_settings(saved: dict[str, Any] | None, config: TrainConfig) -> bool:
    """Whether a resume file's settings are ``config``'s; a setting it predates counts as its default."""
    current = asdict(config)
    if not isinstance(saved, dict) or not set(saved) <= set(current):
        return False
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    return all(saved.get(key, defaults.get(key, MISSING)) == value for key, value in current.items())


class _WeightAverage:
    """Running mean of a model's floating-point parameters and buffers, one snapshot per call to ``update``."""

    BN_BATCHES = 50  # batches used to re-estimate BN statistics for the averaged weights

    def __init__(self) -> None:
        self.mean: dict[str, torch.Tensor] = {}
        self.count = 0

    def update(self, model: nn.Module) -> None:
        self.count += 1
        for name, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            if name not in self.mean:
                self.mean[name] = value.detach().clone()
            else:
                mean = self.mean[name] = self.mean[name].to(value.device)  # resumed on another device
                mean += (value.detach() - mean) / self.count

    def averaged(self, model: nn.Module, loader: BatchLoader) -> nn.Module:
        """A copy of ``model`` holding the averaged weights, with BN statistics re-estimated on training batches."""
        out = copy.deepcopy(model)
        state = out.state_dict()
        state.update({name: value.clone() for name, value in self.mean.items()})
        out.load_state_dict(state)
        batches = (x for i, (x, _) in zip(range(self.BN_BATCHES), loader))
        recalibrate_bn(out, batches)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.count = state["mean"], state["count"]


def _save_resume(path: str | os.PathLike, config: TrainConfig, model: nn.Module, optimizer: Any, scheduler: Any,
                 loader: BatchLoader, best_state: dict, epoch: int, result: TrainResult,
                 swa_state: dict[str, Any] | None = None, sparsity_state: dict[str, Any] | None = None) -> None:
    state = {
        "swa": swa_state, "sparsity": sparsity_state,
        "config": asdict(config), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "loader_rng": loader.generator.get_state(), "torch_rng": torch.get_rng_state(),
        "best_model": best_state, "epoch": epoch, "history": result.history,
        "best_val_accuracy": result.best_val_accuracy, "seconds": result.seconds,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
