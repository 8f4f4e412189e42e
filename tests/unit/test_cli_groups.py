"""Each command group lives with its package (`clipray/<package>/commands.py`) and registers
itself; `clipray.cli` lists every one of them and wires nothing by hand."""

from __future__ import annotations

import argparse
from pathlib import Path

import clipray
from clipray.cli import COMMAND_GROUPS, build_parser


def test_every_commands_module_is_a_listed_group():
    root = Path(clipray.__file__).parent
    found = {".".join(("clipray", *p.relative_to(root).with_suffix("").parts)) for p in root.rglob("commands.py")}
    assert found == {g.__name__ for g in COMMAND_GROUPS}


def test_every_command_comes_from_exactly_one_group():
    seen: dict[str, str] = {}
    for group in COMMAND_GROUPS:
        sub = argparse.ArgumentParser().add_subparsers()
        group.register(sub)
        for name in sub.choices:
            assert name not in seen, f"{name} registered by {seen.get(name)} and {group.__name__}"
            seen[name] = group.__name__
    top = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(top.choices) == set(seen)
    assert {"train", "data", "eval", "runs", "submit", "schedule", "export", "tokenizer", "bench"} <= set(seen)
