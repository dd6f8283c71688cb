"""Sub-commands of this package (added to the ``autoprune`` parser by ``autoprune.cli``)."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this package's sub-commands to the ``autoprune`` parser."""
