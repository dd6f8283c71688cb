"""Shared by the experiment scripts: parse a dataclass config from the command line, write reports."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

from autoprune.utils import versions, write_text_atomic

C = TypeVar("C")


def parse_config(cls: type[C]) -> C:
    """``--field value`` for every dataclass field (bool fields take true/false)."""
    parser = argparse.ArgumentParser(description=cls.__doc__)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = f.type if isinstance(f.type, type) else eval(f.type)  # noqa: S307 -- our own annotations
        if kind is bool:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default)
        elif kind in (int, float, str):
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", default=f.default)
    return cls(**vars(parser.parse_args()))


def write_report(name: str, config: Any, results: dict[str, Any], markdown: str, out_dir: str = "docs/results") -> None:
    """Write ``<out_dir>/<name>.json`` (config, versions, command, results) and ``<name>.md``."""
    module = f"experiments.{Path(sys.argv[0]).stem}"
    payload = {
        "command": " ".join(["python", "-m", module] + [shlex.quote(a) for a in sys.argv[1:]]),
        "config": dataclasses.asdict(config),
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "results": results,
    }
    out = Path(out_dir)
    write_text_atomic(out / f"{name}.json", json.dumps(payload, indent=2) + "\n")
    write_text_atomic(out / f"{name}.md", f"<!-- command: {payload['command']} -->\n{markdown}\n")
    print(markdown)


SHAPES = ("uniform", "early", "late")


def shaped_strategy(space: Any, shape: str, target: float, fill: bool = True) -> Any:
    """A strategy within ``target`` whose pruning is spread in a given *shape*:

    - ``uniform``: one keep ratio for all groups (the largest within the target);
    - ``early`` / ``late``: groups on larger feature maps pruned harder (early) or softer (late), in
      proportion to the feature-map side.

    With ``fill`` the budget fill (``PruningSpace.fill``) then spends what is left of the target.
    """
    import numpy as np

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if shape == "uniform":
        strategy = space.keep_counts(space.uniform(target)) / space.channels
    else:
        side = np.array([g.feature_size for g in space.groups], dtype=float)
        weight = side / side.max() if shape == "early" else side.min() / side
        strategy = 1.0 - 0.9 * weight  # under budget for any sensible target; the fill spends the rest
        if not fill:
            raise ValueError("the early/late shapes need the budget fill to meet the target")
    return space.fill(strategy, target) if fill else strategy
