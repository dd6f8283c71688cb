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
