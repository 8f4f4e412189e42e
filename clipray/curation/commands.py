"""`clipray data curate`: added to the `data` group that clipray.data.commands makes.

The command lives here rather than with the other `data` commands because its driver
(clipray.curation.run) starts Ray, records an MLflow run and loads the scoring model, which
the data layer does not import.
"""

from __future__ import annotations

import argparse
import json

from clipray.commandline import Subparsers, add_pipeline_args


def _group(sub: Subparsers, name: str) -> Subparsers | None:
    """The subcommands of the top-level command `name` (e.g. `data`), if `sub` has it."""
    parser = sub.choices.get(name)
    if parser is None:
        return None
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def register(sub: Subparsers) -> None:
    """Adds `curate` to the `data` group (clipray.cli registers clipray.data.commands first; on a
    parser without that group there is nothing to add to)."""
    data = _group(sub, "data")
    if data is None:
        return
    p = data.add_parser(
        "curate", help="filter, de-duplicate and decontaminate data.source; write the kept rows "
                       "(img2dataset parquet) and a manifest of drops by reason")
    add_pipeline_args(p)
    p.add_argument("--out", required=True, help="output directory or s3:// URI")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object {"rows_in", "rows_out", "dropped", "out"} on stdout and nothing else')
    p.add_argument("--no-log", action="store_true", help="record no MLflow run")
    p.set_defaults(func=cmd_data_curate)


def cmd_data_curate(args: argparse.Namespace) -> int:
    from clipray.config import load_config
    from clipray.curation.run import curate

    config = load_config(args.pipeline, args.overrides)
    result = curate(config, args.out, quiet=args.json, log=not args.no_log)
    if args.json:
        print(json.dumps(result.summary()))
    else:
        print(f"rows in {result.rows_in}, rows out {result.rows_out} in {result.elapsed_s:.1f} s -> {result.out}")
        for reason, n in result.dropped.items():
            print(f"  dropped {reason}: {n}")
        if result.run_id:
            print(f"mlflow_run_id: {result.run_id}")
    return 0
