"""The experiment scripts: their configs parse from the command line, and the pruning shapes they share."""

import dataclasses
import importlib
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro

from autoprune import models
from autoprune.pruning import PruningSpace
from experiments.common import SHAPES, shaped_strategy

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.py") if p.stem != "__init__")
WITHOUT_CONFIG = {"common", "merge_reports"}  # shared code; merge_reports takes report folders as arguments
CONFIGURED = [s for s in SCRIPTS if s not in WITHOUT_CONFIG]


def config_of(script: str) -> type:
    module = importlib.import_module(f"experiments.{script}")
    cls = getattr(module, "Config", None)
    assert cls is not None and dataclasses.is_dataclass(cls), f"experiments/{script}.py has no Config dataclass"
    return cls


def flag(field: dataclasses.Field) -> str:
    return "--" + field.name.replace("_", "-")


def test_every_script_but_the_shared_ones_has_a_config():
    assert set(WITHOUT_CONFIG) <= set(SCRIPTS)
    assert CONFIGURED


@pytest.mark.parametrize("script", CONFIGURED)
def test_config_defaults_and_overrides_parse(script):
    cls = config_of(script)
    assert tyro.cli(cls, args=[]) == cls()
    names = {f.name for f in dataclasses.fields(cls)}
    if "seed" in names:
        assert tyro.cli(cls, args=["--seed", "3"]).seed == 3
    defaults = cls()
    for f in dataclasses.fields(cls):  # every field takes a value other than its default
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            args, value = [flag(f) if not default else "--no-" + flag(f)[2:]], not default
        elif isinstance(default, (int, float)):
            value = default + (1 if isinstance(default, int) else 0.5)
            args = [flag(f), str(value)]
        elif isinstance(default, str):
            value = default + "x"
            args = [flag(f), value]
        elif isinstance(default, list) and all(isinstance(v, str) for v in default):
            value = ["a", "b"]
            args = [flag(f), *value]
        else:
            continue
        assert getattr(tyro.cli(cls, args=args), f.name) == value, (script, args)


def quoted_commands() -> list[tuple[str, str, list[str]]]:
    """(where, script, arguments) of every ``python -m experiments.<script> ...`` the docs, the reports'
    recorded commands and the scripts quote."""
    files = [ROOT / "README.md", ROOT / "docs" / "RESULTS.md", *sorted((ROOT / "docs" / "results").glob("*.md")),
             *sorted((ROOT / "experiments").glob("*.py")), *sorted((ROOT / "experiments").glob("*.sh"))]
    found = []
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text().replace("\\\n", " ")
        for m in re.finditer(r"python -m experiments\.(\w+)([^\n`]*)", text):
            script, rest = m.group(1), m.group(2).replace("-->", "")
            if script in CONFIGURED:
                found.append((path.name, script, shlex.split(rest, comments=True)))
    return found


def test_quoted_commands_parse():
    commands = quoted_commands()
    assert commands
    for where, script, args in commands:
        try:
            tyro.cli(config_of(script), args=args)
        except SystemExit as exc:
            raise AssertionError(f"{where}: python -m experiments.{script} {shlex.join(args)} does not parse") from exc


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    return PruningSpace(models.create("smallcnn").eval(), torch.zeros(1, 3, 8, 8))  # sides 8, 8, 4, 4


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target", [0.2, 0.5, 0.8])
def test_shaped_strategy_is_within_the_target(space, shape, target):
    strategy = shaped_strategy(space, shape, target)
    ratio = space.flops_ratio(strategy)
    assert target - 0.02 <= ratio <= target  # the fill spends the budget left over
    if shape == "uniform":
        unfilled = shaped_strategy(space, shape, target, fill=False)
        assert space.flops_ratio(unfilled) <= target
        assert np.all(space.keep_counts(strategy) >= space.keep_counts(unfilled))


def test_early_prunes_the_large_feature_maps_harder_than_late(space):
    early = space.keep_counts(shaped_strategy(space, "early", 0.4)) / space.channels
    late = space.keep_counts(shaped_strategy(space, "late", 0.4)) / space.channels
    assert early[0] < late[0] and early[-1] > late[-1]


def test_shaped_strategy_refuses_unknown_shapes(space):
    with pytest.raises(ValueError, match="unknown shape"):
        shaped_strategy(space, "diagonal", 0.5)
    with pytest.raises(ValueError, match="budget fill"):
        shaped_strategy(space, "early", 0.5, fill=False)
