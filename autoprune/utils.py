"""Small helpers shared across the package: atomic writes, seeding, environment record."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    A crash or Ctrl-C half-way leaves the old file (or no file), never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:  # type: ignore[no-untyped-def]
    """Lay out a matplotlib figure, write it as a PNG atomically, and close it."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())


def hms(seconds: float) -> str:
    """``H:MM:SS`` of a duration, for progress lines."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def versions() -> dict[str, str]:
    """Versions of the pieces that determine results, recorded in every output."""
    import gymnasium
    import stable_baselines3
    import torch_pruning

    import autoprune

    return {
        "autoprune": autoprune.__version__,
        "torch": str(torch.__version__),  # a TorchVersion object would not load with weights_only
        "torch_pruning": torch_pruning.__version__,
        "gymnasium": gymnasium.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
