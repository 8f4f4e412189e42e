"""`clipray scheduler`: one process that submits due retraining runs through the Ray Jobs API.

Each tick: (1) for every schedule whose next cron time has passed, record one submission for that
window (deterministic id `clipray-<schedule>-<window>-a0`) and advance the schedule; missed ticks
while the scheduler was down collapse into one run, because a retraining run takes every partition
that arrived since the last successful one anyway; (2) send every `pending` submission (again,
after a restart: Ray refuses the duplicate id and the submission counts as sent); (3) poll the
open ones; a FAILED (or STOPPED) run is resubmitted as attempt n+1 of the same window up to
`max_retries`, and so is a `lost` one, which the cluster no longer knows (a new head, a deleted
job); with no retries left the submission ends `failed` or `lost`, with the reason as its message.
The job itself (`clipray retrain`) makes a repeated window harmless: it never registers twice.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from clipray.schedule.store import OPEN, Schedule, ScheduleStore, Submission, next_after


def window_id(due: float) -> str:
    return datetime.fromtimestamp(due, tz=timezone.utc).strftime("%Y%m%dT%H%M")


def submission_id(schedule: str, window: str, attempt: int) -> str:
    return f"clipray-{schedule}-{window}-a{attempt}"


class Scheduler:
    def __init__(self, store: ScheduleStore, connect: Callable[[str | None], Any] | None = None,
                 log: Callable[[str], None] = print) -> None:
        from clipray.jobs import connect as jobs_connect

        self.store = store
        self.connect = connect or jobs_connect
        self.log = log

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for s in self.store.schedules():
            if s.next_due <= now:
                window = window_id(s.next_due)
                self.store.claim_window(s, window, submission_id(s.name, window, 0), next_after(s.cron, now))
                self.log(f"[scheduler] {s.name}: window {window} due")
        schedules = {s.name: s for s in self.store.schedules()}
        for sub in self.store.submissions(statuses=OPEN):
            owner = schedules.get(sub.schedule)
            if owner is None:  # schedule removed: stop tracking its runs
                self.store.set_status(sub.submission_id, "orphaned")
                continue
            try:
                if sub.status == "pending":
                    self._send(owner, sub)
                else:
                    self._poll(owner, sub)
            except Exception as e:  # one unreachable cluster must not hold up the other schedules
                self.log(f"[scheduler] {owner.name}: {sub.submission_id}: {type(e).__name__}: {e}")

    def _send(self, s: Schedule, sub: Submission) -> None:
        from clipray.jobs import ClusterError
        from clipray.jobs.submit import cluster_python_command, prepare_job, submit_pipeline

        job = prepare_job(s.pipeline, s.overrides, submission_id=sub.submission_id,
                          metadata={"clipray.schedule": s.name, "clipray.window": sub.window})
        # The cluster's own interpreter, as for `clipray submit`: a head started as
        # `.venv/bin/ray start --head` has no clipray on the `python` its PATH finds.
        job.entrypoint = cluster_python_command(f"-m clipray retrain pipeline.yaml --schedule {shlex.quote(s.name)} "
                                                f"--window {shlex.quote(sub.window)}")
        client = self.connect(s.address)
        try:
            submit_pipeline(client, client.get_address(), job)
            self.log(f"[scheduler] {s.name}: submitted {sub.submission_id}")
        except ClusterError as e:
            if "already exists" not in str(e):
                self.log(f"[scheduler] {s.name}: submitting {sub.submission_id} failed: {e}")
                return  # stays pending; tried again next tick
            self.log(f"[scheduler] {s.name}: {sub.submission_id} was already submitted")
        self.store.set_status(sub.submission_id, "submitted")

    def _poll(self, s: Schedule, sub: Submission) -> None:
        from clipray.jobs.submit import status_name

        client = self.connect(s.address)
        try:
            info = client.get_job_info(sub.submission_id)
        except RuntimeError as e:
            if "does not exist" not in str(e):
                raise
            # The cluster no longer knows the job (a new head, a deleted job): whether it ran is
            # unknown, so the window is retried like a failed run, within the same bound.
            self._ended(s, sub, "lost", f"the cluster at {client.get_address()} no longer knows this job")
            return
        status = status_name(info)
        if status in ("PENDING", "RUNNING"):
            return
        if status == "SUCCEEDED":
            self.store.set_status(sub.submission_id, "succeeded")
            self.log(f"[scheduler] {s.name}: {sub.submission_id} succeeded")
        else:
            self._ended(s, sub, "failed", f"{status.lower()}: {info.message or ''}"[-2000:])

    def _ended(self, s: Schedule, sub: Submission, status: str, message: str) -> None:
        """A run that did not succeed: attempt n+1 of its window, or `status` when no retries are left."""
        if sub.attempt < s.max_retries:
            self.store.add_retry(sub, submission_id(s.name, sub.window, sub.attempt + 1),
                                 status="retried" if status == "failed" else status, message=message)
            self.log(f"[scheduler] {s.name}: {sub.submission_id} {status} ({message}), retrying window {sub.window}")
        else:
            self.store.set_status(sub.submission_id, status, message)
            self.log(f"[scheduler] {s.name}: {sub.submission_id} {status} ({message}); no retries left")

    def run_forever(self, interval_s: float = 30.0) -> None:
        while True:
            try:
                self.tick()
            except Exception as e:  # one bad schedule or an unreachable cluster must not stop the service
                self.log(f"[scheduler] tick failed: {type(e).__name__}: {e}")
            time.sleep(interval_s)
