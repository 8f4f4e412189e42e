"""`clipray schedule add|list|remove|render`, `clipray scheduler` and `clipray retrain`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from clipray.commandline import Subparsers, add_pipeline_args, non_negative
from clipray.errors import UnknownNameError

DEFAULT_DB = "~/.clipray/scheduler.db"


def register(sub: Subparsers) -> None:
    from clipray.jobs.commands import add_address

    sched = sub.add_parser("schedule", help="recurring retraining schedules (cron)").add_subparsers(
        dest="schedule_command", required=True)
    p = sched.add_parser("add", help="add a schedule that retrains PIPELINE on a cluster")
    p.add_argument("name")
    add_pipeline_args(p)
    p.add_argument("--cron", required=True, type=cron_arg, help="cron expression (UTC), e.g. '0 3 * * *'")
    add_address(p)
    p.add_argument("--max-retries", type=non_negative, default=2, help="resubmissions of a failed window")
    p.add_argument("--start", default=None, help="count cron ticks from this ISO time (default: now)")
    add_state(p)
    p.set_defaults(func=cmd_schedule_add)
    p = sched.add_parser("list", help="schedules, next run and last submission")
    add_state(p)
    p.set_defaults(func=cmd_schedule_list)
    p = sched.add_parser("remove", help="remove a schedule")
    p.add_argument("name")
    add_state(p)
    p.set_defaults(func=cmd_schedule_remove)
    p = sched.add_parser("render", help="print a schedule as Kubernetes YAML (the pipeline as a ConfigMap, and the schedule)")
    p.add_argument("name")
    p.add_argument("--kind", choices=["RayCronJob", "CronJob"], default="RayCronJob")
    add_state(p)
    p.set_defaults(func=cmd_schedule_render)

    p = sub.add_parser("scheduler", help="run the scheduler service (submits due runs via the Jobs API)")
    add_state(p)
    p.add_argument("--interval", type=float, default=30.0, help="seconds between checks")
    p.add_argument("--once", action="store_true", help="one check, then exit")
    p.add_argument("--now", default=None, help="with --once: act as if it were this ISO time")
    p.set_defaults(func=cmd_scheduler)

    p = sub.add_parser("retrain", help="one retraining run: new partitions, warm start, register, champion")
    add_pipeline_args(p)
    p.add_argument("--schedule", default="manual", help="schedule name recorded on the run")
    p.add_argument("--window", default=None, help="window id (idempotence key; default: this minute, UTC)")
    p.add_argument("--partition-key", default="dt", help="hive partition key under data.source")
    p.set_defaults(func=cmd_retrain)


def add_state(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", default=os.environ.get("CLIPRAY_SCHEDULER_DB", DEFAULT_DB),
                   help=f"scheduler SQLite file (default $CLIPRAY_SCHEDULER_DB or {DEFAULT_DB})")


def cron_arg(text: str) -> str:
    """argparse type of --cron: a bad expression is refused by the parser, naming the option."""
    from clipray.schedule.store import validate_cron

    try:
        return validate_cron(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _ts(value: str | None) -> float | None:
    if value is None:
        return None
    dt = datetime.fromisoformat(value)
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def _fmt(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cmd_schedule_add(args: argparse.Namespace) -> int:
    from clipray.config import load_config
    from clipray.schedule.store import Schedule, ScheduleStore
    from clipray.text.encoding import text_encoding

    # Refuse a broken pipeline now, not at 3 a.m.
    text_encoding(load_config(args.pipeline, args.overrides)).check_vocabulary(remote_ok=True)
    s = Schedule(args.name, args.cron, str(Path(args.pipeline).resolve()), list(args.overrides), args.address,
                 args.max_retries)
    ScheduleStore(args.state).add(s, now=_ts(args.start))
    print(f"schedule {s.name}: '{s.cron}', next run {_fmt(s.next_due)}")
    return 0


def cmd_schedule_list(args: argparse.Namespace) -> int:
    from clipray.schedule.store import ScheduleStore

    store = ScheduleStore(args.state)
    print(f"{'NAME':20} {'CRON':16} {'NEXT RUN':22} {'LAST':34} PIPELINE")
    for s in store.schedules():
        subs = store.submissions(s.name)
        last = f"{subs[-1].submission_id.rsplit('-', 2)[-2]} {subs[-1].status}" if subs else "-"
        print(f"{s.name:20} {s.cron:16} {_fmt(s.next_due):22} {last:34} {s.pipeline}")
    return 0


def cmd_schedule_remove(args: argparse.Namespace) -> int:
    from clipray.schedule.store import ScheduleStore

    if not ScheduleStore(args.state).remove(args.name):
        raise UnknownNameError(f"no schedule {args.name!r} in {args.state}")
    print(f"removed schedule {args.name}")
    return 0


def cmd_schedule_render(args: argparse.Namespace) -> int:
    from clipray.config import load_config
    from clipray.schedule.k8s import cluster_path_problems, render
    from clipray.schedule.store import ScheduleStore

    s = ScheduleStore(args.state).get(args.name)
    config = load_config(s.pipeline, s.overrides)
    # Warnings, not errors: an absolute path may exist inside the image, and the YAML may be edited.
    for problem in cluster_path_problems(config):
        print(f"clipray: warning: {problem}", file=sys.stderr)
    print(render(s, args.kind, config), end="")
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    from clipray.schedule.service import Scheduler
    from clipray.schedule.store import ScheduleStore

    sched = Scheduler(ScheduleStore(args.state), log=lambda m: print(m, flush=True))
    if args.once:
        sched.tick(_ts(args.now))
        return 0
    print(f"[scheduler] state {args.state}; checking every {args.interval:.0f} s", flush=True)
    sched.run_forever(args.interval)
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from clipray.config import load_config
    from clipray.schedule.retrain import retrain

    config = load_config(args.pipeline, args.overrides)
    window = args.window or time.strftime("%Y%m%dT%H%M", time.gmtime())
    out = retrain(config, window=window, schedule=args.schedule, partition_key=args.partition_key)
    if out.action == "no-new-data":
        print(f"[clipray] retrain {window}: no new partitions since the last registered version; nothing to do")
    elif out.action == "already-registered":
        print(f"[clipray] retrain {window}: version {out.version} was registered by an earlier attempt")
    else:
        inc = "none" if out.incumbent_score is None else f"{out.incumbent_score:.4f}"
        print(f"[clipray] retrain {window}: partitions {', '.join(out.partitions)}; warm start from version "
              f"{out.parent_version or 'none (fresh)'}; registered version {out.version}; "
              f"score {out.new_score:.4f} vs champion {inc}: "
              f"{'champion moved' if out.champion_moved else 'champion kept'}")
    return 0
