"""Command line: parse -> load config -> call one function per command.

Each package keeps its commands in its own `commands.py`; `register(sub)` adds them (see
`clipray.commandline`). This module only lists those groups and turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from clipray.bench import commands as bench_commands
from clipray.curation import commands as curation_commands
from clipray.data import commands as data_commands
from clipray.eval import commands as eval_commands
from clipray.export import commands as export_commands
from clipray.jobs import commands as jobs_commands
from clipray.schedule import commands as schedule_commands
from clipray.text import commands as text_commands
from clipray.tracking import commands as tracking_commands
from clipray.train import commands as train_commands

# In the order `clipray --help` lists them (curation adds `curate` to the `data` group).
COMMAND_GROUPS = [data_commands, curation_commands, text_commands, train_commands, eval_commands, export_commands,
                  tracking_commands, jobs_commands, schedule_commands, bench_commands]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipray", description="CLIP-family training on Ray, tracked in MLflow")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A `UserError` (a setting, a file, a name the user can fix) is one line on
    stderr and exit code 2; anything else is a bug and keeps its traceback."""
    from clipray.errors import UserError
    from clipray.runtime import skip_known_log_lines

    skip_known_log_lines()  # before anything imports ray

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"clipray: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
