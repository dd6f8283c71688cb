"""The model registry; zoo modules add themselves with ``@MODELS.register(name)``."""

from collections.abc import Callable

import torch.nn as nn

from autoprune.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
