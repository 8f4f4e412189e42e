"""What every command group of the CLI shares: argparse value types and the pipeline arguments.

Each package that has commands keeps them in its own `commands.py`, whose `register(sub)` adds
its subcommands (parser, arguments, and the function that runs it) to the `clipray` parser;
`clipray.cli` lists those modules. A command function takes the parsed arguments and returns the
exit code; it imports what it runs when it runs, so `clipray --help` stays fast.
"""

from __future__ import annotations

import argparse

# The `sub` argument of every group's `register`: what `ArgumentParser.add_subparsers` returns.
Subparsers = argparse._SubParsersAction


def positive(text: str) -> int:
    """argparse type of counts and sizes: `--rows 0` is refused by the parser, naming the option."""
    return int_at_least(text, 1, "a positive integer")


def non_negative(text: str) -> int:
    return int_at_least(text, 0, "an integer, 0 or more")


def int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def add_pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="pipeline YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted path; value parsed as YAML); repeatable")


def add_resume_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", default=None, metavar="RUN_ID",
                   help="continue this MLflow run (its driver was lost) from its latest committed checkpoint; "
                        "the pipeline must match the run's recorded config")
