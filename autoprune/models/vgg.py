"""VGG-16 with batch norm for 32x32 inputs (Simonyan & Zisserman 2015; the CIFAR variant with one
linear classifier used throughout the pruning literature, e.g. network slimming and AMC)."""

from __future__ import annotations

import torch
import torch.nn as nn

from autoprune.models.registry import MODELS

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, cfg: tuple, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@MODELS.register("vgg16_bn")
def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return VGG(VGG16_CFG, num_classes, in_channels)
