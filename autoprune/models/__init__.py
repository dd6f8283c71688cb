"""Model zoo: ``create(name, num_classes=...)`` and ``list_models()``.

Zoo names (``resnet20``, ``vgg16_bn``, ...) are CIFAR-style networks for small inputs. Any torchvision
classification model is available as ``tv:<name>`` (random init; no weights are downloaded).
"""

from __future__ import annotations

import torch.nn as nn

from autoprune.errors import AutopruneError
from autoprune.models import cifar_resnet, mobilenetv2, small, vgg  # noqa: F401  (registers the zoo)
from autoprune.models.registry import MODELS

TORCHVISION_PREFIX = "tv:"


def list_models() -> list[str]:
    """Names of the zoo models (torchvision models are reachable as ``tv:<name>`` too)."""
    return MODELS.names()


def create(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build a randomly initialised model by name."""
    if num_classes < 1:
        raise AutopruneError(f"num_classes must be >= 1, got {num_classes}")
    if name.startswith(TORCHVISION_PREFIX):
        return _create_torchvision(name[len(TORCHVISION_PREFIX) :], num_classes, in_channels)
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels)


def _create_torchvision(name: str, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise AutopruneError(
            f"unknown torchvision classification model {name!r}; see torchvision.models.list_models()"
        )
    if in_channels != 3:
        raise AutopruneError("torchvision models take 3-channel inputs")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


__all__ = ["create", "list_models", "MODELS"]
