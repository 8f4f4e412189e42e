"""`clipray submit` and `clipray jobs list|status|logs|stop`."""

from __future__ import annotations

import argparse
import sys
import time

from clipray.commandline import Subparsers, add_pipeline_args, add_resume_arg, positive
from clipray.jobs.client import ClusterError, call, connect
from clipray.jobs.submit import prepare_job, status_name, submit_pipeline, wait_for_job


def add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray dashboard, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS)")


def register(sub: Subparsers) -> None:
    p = sub.add_parser("submit", help="submit a pipeline to a Ray cluster through the Jobs API")
    add_pipeline_args(p)
    add_address(p)
    p.add_argument("--wait", action="store_true", help="stream the job's logs and exit with its outcome")
    p.add_argument("--submission-id", default=None, help="job id (a resubmitted id is refused by Ray)")
    add_resume_arg(p)
    p.set_defaults(func=cmd_submit)

    jobs = sub.add_parser("jobs", help="list, inspect, follow and stop Ray jobs").add_subparsers(
        dest="jobs_command", required=True)
    p = jobs.add_parser("list", help="recent jobs, newest first")
    add_address(p)
    p.add_argument("--limit", type=positive, default=20)
    p.set_defaults(func=cmd_jobs_list)
    for name, func, text in [("status", cmd_jobs_status, "a job's status and message"),
                             ("logs", cmd_jobs_logs, "a job's logs"),
                             ("stop", cmd_jobs_stop, "stop a running job")]:
        p = jobs.add_parser(name, help=text)
        p.add_argument("job_id")
        add_address(p)
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="stream until the job ends; exit with its outcome")
        p.set_defaults(func=func)


def cmd_submit(args: argparse.Namespace) -> int:
    job = prepare_job(args.pipeline, args.overrides, submission_id=args.submission_id, resume=args.resume)
    client = connect(args.address)
    address = client.get_address()
    job_id = submit_pipeline(client, address, job)
    print(job_id, flush=True)
    if not args.wait:
        print(f"follow it: clipray jobs logs {job_id} --address {address} --follow", file=sys.stderr)
        return 0
    return _finish(client, address, job_id)


def _finish(client, address: str, job_id: str) -> int:  # type: ignore[no-untyped-def]
    try:
        info = wait_for_job(client, address, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} keeps running (clipray jobs stop {job_id})", file=sys.stderr)
        return 130
    status = status_name(info)
    if status == "SUCCEEDED":
        print(f"job {job_id} succeeded", file=sys.stderr)
        return 0
    print(f"clipray: job {job_id} {status.lower()}: {info.message or 'no message'}", file=sys.stderr)
    return 1


def cmd_jobs_list(args: argparse.Namespace) -> int:
    client = connect(args.address)
    jobs = call(client.get_address(), client.list_jobs)
    jobs = sorted(jobs, key=lambda j: j.start_time or 0, reverse=True)[: args.limit]
    print(f"{'SUBMISSION ID':48} {'STATUS':10} {'STARTED':20} PIPELINE")
    for j in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "-"
        pipeline = (j.metadata or {}).get("clipray.pipeline", "-")
        print(f"{j.submission_id or j.job_id or '-':48} {status_name(j):10} {started:20} {pipeline}")
    return 0


def cmd_jobs_status(args: argparse.Namespace) -> int:
    client = connect(args.address)
    info = call(client.get_address(), client.get_job_info, args.job_id)
    print(f"{args.job_id}: {status_name(info)}")
    if info.message:
        print(info.message)
    return 0


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    client = connect(args.address)
    address = client.get_address()
    if args.follow:
        return _finish(client, address, args.job_id)
    sys.stdout.write(call(address, client.get_job_logs, args.job_id))
    return 0


def cmd_jobs_stop(args: argparse.Namespace) -> int:
    client = connect(args.address)
    stopped = call(client.get_address(), client.stop_job, args.job_id)
    print(f"{args.job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


__all__ = ["ClusterError", "add_address", "cmd_jobs_list", "cmd_jobs_logs", "cmd_jobs_status", "cmd_jobs_stop",
           "cmd_submit"]
