"""Small helpers shared across the package: atomic writes, safe reads, seeding, environment record."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.errors import AutopruneError


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


def check_output(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse, before any work, an output path that cannot be written: a directory where a file is meant,
    or a parent that is a file or not writable. Missing parent folders are fine (they are created)."""
    path = Path(path)
    if path.is_dir():
        raise AutopruneError(f"{what} {path} is a directory: give a file name")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise AutopruneError(f"{what} {path} cannot be written: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AutopruneError(f"{what} {path} cannot be written: {parent} is not writable")
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """As ``check_output`` for a folder: an existing file there is refused."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AutopruneError(f"{what} {path} is a file: give a folder")
    check_output(path / "_", what)
    return path


def check_readable(path: str | os.PathLike, what: str = "file") -> Path:
    """Refuse a missing file, or a directory where a file is meant, in one line naming ``what``."""
    path = Path(path)
    if path.is_dir():
        raise AutopruneError(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise AutopruneError(f"{what} {path} does not exist")
    return path


def load_tensors(path: str | os.PathLike, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one clear error naming ``path`` when it is
    missing, damaged or not a weights-only file (nothing in the file is ever run)."""
    path = check_readable(path, what)
    try:
        with warnings.catch_warnings():  # torch's notes on odd pickle protocols: the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- truncated zip, random bytes, a pickle with code: all refused alike
        raise AutopruneError(f"{what} {path} is damaged or not a PyTorch weights file (it was read with "
                             "weights_only=True: nothing in it ran)") from None


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """The JSON in ``path``, with one clear error naming it when it is missing or not valid JSON."""
    path = check_readable(path, what)
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise AutopruneError(f"{what} {path} is not valid JSON ({str(exc).splitlines()[0][:100]})") from None


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


def describe_differences(saved: dict[str, Any], now: dict[str, Any], limit: int = 3) -> str:
    """Which entries of two records differ, nested keys joined by dots, e.g. ``settings.proxy: 'bn' saved,
    'recon' now``: what a refused resume tells the user to change."""
    def flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in record.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    a, b = flat(saved), flat(now)
    keys = sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
    parts = [f"{k}: {a.get(k)!r} saved, {b.get(k)!r} now" for k in keys[:limit]]
    return "; ".join(parts) + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


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
