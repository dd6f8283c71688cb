"""Pieces shared by the CLI modules: the command registry and the arguments several commands take."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from autoprune.errors import AutopruneError

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


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def seed_int(text: str) -> int:
    """argparse type: a random seed, an integer in [0, 2**32 - 1] (what NumPy and PyTorch accept)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"a seed is an integer in [0, 2**32 - 1], got {value}")
    return value


def seed_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")


def parse_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(":"))
    except ValueError:
        raise AutopruneError(f"--targets must look like LOW:HIGH (e.g. 0.2:0.9), got {text!r}") from None
    return low, high


def parse_names(text: str, flag: str, allow_empty: bool = False) -> list[str]:
    """A comma-separated list of distinct, non-empty items (``flag`` names the option in errors); an empty
    text is the empty list where ``allow_empty``."""
    if allow_empty and not text.strip():
        return []
    items = [v.strip() for v in text.split(",")]
    if not text.strip() or any(not v for v in items):
        raise AutopruneError(f"{flag} must be a comma-separated list without empty items, got {text!r}")
    repeated = sorted({v for v in items if items.count(v) > 1})
    if repeated:
        raise AutopruneError(f"{flag} names {', '.join(repeated)} more than once")
    return items


def parse_list(text: str, flag: str = "--targets") -> list[float]:
    """A comma-separated list of distinct numbers, e.g. ``0.3,0.5,0.7``."""
    items = parse_names(text, flag)
    try:
        values = [float(v) for v in items]
    except ValueError:
        raise AutopruneError(f"{flag} must be a comma-separated list of numbers (e.g. 0.3,0.5,0.7), got {text!r}") from None
    if len(set(values)) < len(values):
        raise AutopruneError(f"{flag} gives the same value more than once: {text!r}")
    return values


def settings_args(p: argparse.ArgumentParser, defaults_from: str) -> None:
    """Flags of ``PruningSettings``; unset flags keep the defaults of ``defaults_from``."""
    g = p.add_argument_group(f"pruning settings (default: {defaults_from})")
    g.add_argument("--criterion", help="channel importance criterion (see `autoprune criteria`; l1 by default)")
    g.add_argument("--reward", help="relative (default), accuracy or error_log_flops")
    g.add_argument("--prior", help="the allocation an action of 0 gives: global (default: a global importance "
                                   "ranking) or uniform (one keep ratio)")
    g.add_argument("--min-keep", type=float, help="smallest keep ratio of a group (default 0.1)")
    g.add_argument("--round-to", type=int, help="keep channel counts that are multiples of this, e.g. 8 (default 1)")
    g.add_argument("--proxy", metavar="NAME",
                   help="how the proxy scores a strategy: recon (default; least-squares reconstruction, the base "
                        "model's BN statistics), bn (adaptive BN), recon-bn (reconstruction, then adaptive BN), "
                        "distill (distillation steps towards the base model, --proxy-steps of them, default 200) or "
                        "recon-distill (reconstruction, then distill)")
    g.add_argument("--proxy-measure", metavar="NAME",
                   help="what the proxy reports of its validation predictions: kl (default; exp(-KL) of the base "
                        "model's outputs to the pruned one's), accuracy (top-1) or soft (mean probability of the "
                        "true label)")
    g.add_argument("--proxy-images", type=int,
                   help="validation images the proxy scores, at most (default 2000; all where the split is smaller)")
    g.add_argument("--proxy-steps", type=int,
                   help="SGD steps on training batches before the proxy scores a strategy (default 0: adaptive BN only)")
    g.add_argument("--no-fill-budget", dest="fill_budget", action="store_false", default=None,
                   help="end episodes where the action wall leaves them, instead of spending the unused budget")
    g.add_argument("--reconstruct", type=int, metavar="IMAGES",
                   help="refit the layers after the removed channels by least squares on this many training images "
                        "(e.g. 256), for the proxy and every pruned model (default 0: off)")
    g.add_argument("--observation", help="what the agent sees of a group: layer (default; normalised within the "
                                         "model) or transferable (the same meaning on any architecture)")


# The flags of ``settings_args`` and ``recipe_args``, by their ``PruningSettings`` / ``FinetuneRecipe`` field
# names. Records store the settings and recipe they resolve to, so a resume compares those, not the flags
# as typed: ``--proxy recon`` given explicitly resumes a report made with the default.
SETTING_FLAGS = ("criterion", "reward", "prior", "min_keep", "round_to", "proxy", "proxy_measure", "proxy_images",
                 "proxy_steps", "fill_budget", "reconstruct", "observation")
RECIPE_FLAGS = ("lr", "schedule", "distill", "precision")


def settings_from(args: argparse.Namespace, base=None):  # type: ignore[no-untyped-def]
    """``base`` (default: the library's ``PruningSettings()``) with the flags the user gave."""
    from autoprune.task import PruningSettings

    return (base or PruningSettings()).replace(**{name: getattr(args, name) for name in SETTING_FLAGS})


def recipe_args(p: argparse.ArgumentParser, epochs_flag: str = "--finetune-epochs") -> None:
    """Flags of ``FinetuneRecipe``; unset ones keep the recipe's defaults."""
    from autoprune.recovery import FinetuneRecipe

    d = FinetuneRecipe()
    g = p.add_argument_group("fine-tune recipe (the same for prune, finetune and evaluate)")
    g.add_argument(epochs_flag, type=int, default=0, dest="finetune_epochs", help="fine-tune epochs (default 0: none)")
    g.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr})")
    g.add_argument("--schedule", choices=["onecycle", "cosine"], help=f"learning-rate schedule (default {d.schedule})")
    g.add_argument("--distill", action=argparse.BooleanOptionalAction, default=None,
                   help="Hinton et al.'s distillation loss towards the unpruned model (default: on)")
    precision_arg(g, "fine-tune")


def recipe_from(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The recipe the flags describe, or None when no fine-tune epochs were asked for."""
    from autoprune.recovery import FinetuneRecipe

    if args.finetune_epochs < 0:
        raise AutopruneError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    if args.finetune_epochs == 0:
        return None
    return FinetuneRecipe(epochs=args.finetune_epochs).replace(**{name: getattr(args, name) for name in RECIPE_FLAGS})


def workers_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--workers`` and ``--address``: run on Ray, on this machine or on a cluster."""
    p.add_argument("--workers", type=positive_int, default=1, help=f"{what} (default 1: in this process, without Ray)")
    p.add_argument("--address", help="join a running Ray cluster: auto (started here with `ray start`) or HOST:PORT "
                                     "of its head node")
