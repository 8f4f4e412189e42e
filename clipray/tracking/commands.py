"""`clipray runs`."""

from __future__ import annotations

import argparse

from clipray.commandline import Subparsers, positive


def register(sub: Subparsers) -> None:
    p = sub.add_parser("runs", help="recent MLflow runs with key metrics and how to open them")
    p.add_argument("--experiment", default=None, help="only this experiment (default: all)")
    p.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else ./mlruns.db")
    p.add_argument("--limit", type=positive, default=10)
    p.add_argument("--flush", default=None, metavar="DIR",
                   help="deliver the metric records a run left in its spool (after a tracking-server outage)")
    p.set_defaults(func=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    from clipray.tracking import resolve_tracking_uri
    from clipray.tracking.runs import format_runs, recent_runs

    if args.flush:
        from clipray.tracking.spool import flush_directory

        for path, n in flush_directory(args.flush).items():
            print(f"delivered {n} record(s) from {path}")
        return 0

    print(format_runs(recent_runs(resolve_tracking_uri(args.tracking_uri), args.experiment, args.limit)))
    return 0
