"""Small networks for the embedded default data set and the fast test suite."""

from __future__ import annotations

import torch
import torch.nn as nn

from autoprune.models.registry import MODELS


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU layers (16-32-32-64) and a linear head; ~38k parameters."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, 16),
            _conv_bn_relu(16, 32, 2),
            _conv_bn_relu(32, 32),
            _conv_bn_relu(32, 64, 2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class ConcatNet(nn.Module):
    """Two parallel branches joined by a channel concat, then a residual add: a test bed for coupled groups."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, 16)
        self.left = _conv_bn_relu(16, 16, 2)
        self.right = _conv_bn_relu(16, 24, 2)
        self.mix = nn.Sequential(nn.Conv2d(40, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.skip = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.cat([self.left(x), self.right(x)], dim=1)
        y = torch.relu(self.mix(y) + self.skip(x))
        return self.fc(torch.flatten(self.pool(self.dw(y)), 1))


@MODELS.register("smallcnn")
def smallcnn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return SmallCNN(num_classes, in_channels)


@MODELS.register("concatnet")
def concatnet(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ConcatNet(num_classes, in_channels)
