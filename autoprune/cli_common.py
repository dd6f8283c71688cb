"""Pieces shared by the CLI modules: the command registry and common arguments."""

from __future__ import annotations

import argparse
from collections.abc import Callable

COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def command(name: str) -> Callable:
    """Register ``fn(args)`` as the handler of sub-command ``name``."""

    def decorator(fn: Callable) -> Callable:
        COMMANDS[name] = fn
        return fn

    return decorator


def precision_arg(p: argparse.ArgumentParser, what: str = "training") -> None:
    """``--precision``; ``None`` when not given, so reports written before the option existed still resume."""
    p.add_argument("--precision", choices=["fp32", "bf16"],
                   help=f"arithmetic of the {what}: fp32 (default) or bf16 autocast, about 1.6x faster on CPUs "
                        "with AVX512-BF16 or AMX, possibly slower on others")


def data_args(p: argparse.ArgumentParser, default: str | None = "digits") -> None:
    p.add_argument("--data", default=default, help="data set: digits (embedded default), cifar10, cifar100, imagefolder")
    p.add_argument("--data-dir", help="data folder (torchvision CIFAR root or an ImageFolder tree with train/ and test/)")
    p.add_argument("--val-size", type=int, help="validation images carved from the training set (default: 10%%, at most 5000)")
