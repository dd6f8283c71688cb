"""The ``autoprune`` command line: each handler parses, calls one library function and prints.

Sub-commands live in ``base`` (train, demo, info, models, criteria), ``search`` (search, prune, evaluate,
report) and ``deploy`` (finetune, export, quantize, bench); each module has ``add_parsers(sub)`` and
registers its handlers with ``@command``.
"""

from __future__ import annotations

import argparse
import os
import sys

from autoprune.cli import base, deploy, search
from autoprune.cli.common import COMMANDS, positive_int
from autoprune.errors import AutopruneError


def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoprune", description="Conditional automated channel pruning of CNNs.")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: all cores)")
    parser.add_argument("--device", default="cpu", help="where training and fine-tuning steps run: cpu, cuda or auto "
                                                         "(cuda when available); everything else runs on the CPU")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    for module in (base, search, deploy):
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _threads(args.threads)
    try:
        from autoprune.training import set_training_device

        set_training_device(args.device)
        COMMANDS[args.command](args)
        return 0
    except AutopruneError as exc:
        print(f"autoprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoprune: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 -- a CLI user gets one line, --debug shows the traceback
        if args.debug or os.environ.get("AUTOPRUNE_DEBUG"):
            raise
        print(f"autoprune: error: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1

