"""Per-step metrics through an on-disk spool, so that a tracking-server outage does not stop training.

MLflow's client retries a failed request for minutes inside the call: a training loop that logs
directly stalls for the whole outage, and an outage longer than the client's retry budget loses
the records. `SpoolingTracker` appends each `log_metrics` call to a JSON-lines file and returns;
a background thread delivers the records in order, retrying with backoff while the server is
away. Records are delivered once: after a failed attempt the (key, step) pairs the run already
holds (a request that reached the server but whose answer was lost) are left out of the retry.

The spool is bounded (`max_bytes`): when the server has been away so long that it is full, the
trainer waits for room rather than dropping records. `close(timeout_s)` waits for the spool to
drain; a server that does not come back within it raises `TrackingOutage`, naming the spool file,
which `clipray runs --flush DIR` delivers later (the file's first line says to which run).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clipray.errors import MissingFileError, UserError

MAX_BYTES = 64 << 20
FLUSH_TIMEOUT_S = 600.0  # after training, how long to wait for a server that is away


class TrackingOutage(UserError, RuntimeError):
    """The tracking server did not take the spooled records in time; they are left in a file."""


class SpoolingTracker:
    """Wraps a tracker with `run_id` and `tracking_uri`; only `log_metrics` goes through the spool."""

    def __init__(self, tracker: Any, directory: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES,
                 max_backoff_s: float = 30.0) -> None:
        self.tracker = tracker
        self.run_id = tracker.run_id
        self.max_bytes = max_bytes
        self.max_backoff_s = max_backoff_s
        Path(directory).mkdir(parents=True, exist_ok=True)
        # A worker of this run that died on this node (the group is restarted only once the old
        # one is down) may have left records undelivered, some of steps before the checkpoint
        # the new group resumes from: deliver them first, skipping what the run holds.
        for left in sorted(Path(directory).glob(f"{self.run_id}-*.jsonl")):
            with contextlib.suppress(Exception):  # a server away now: the file stays for `--flush`
                flush_file(left)
        self.path = Path(directory) / f"{self.run_id}-{os.getpid()}.jsonl"
        header = {"tracking_uri": getattr(tracker, "tracking_uri", None), "run_id": self.run_id}
        self.path.write_text(json.dumps(header) + "\n")
        self._queue: deque[tuple[dict[str, float], int, int]] = deque()  # (metrics, step, bytes), in order
        self._pending_bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self._abandoned = False  # close_spool gave up: the file is the record now
        self.outage_s = 0.0  # total time the server was away (for the record)
        self._thread = threading.Thread(target=self._deliver, name="clipray-spool", daemon=True)
        self._thread.start()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        line = json.dumps({"step": step, "metrics": dict(metrics)}) + "\n"
        with self._cond:
            while self._pending_bytes > self.max_bytes:
                self._cond.wait(1.0)  # full: the trainer waits rather than drop records
            with self.path.open("a") as f:
                f.write(line)
            self._pending_bytes += len(line)
            self._queue.append((dict(metrics), step, len(line)))
            self._cond.notify_all()

    def _deliver(self) -> None:
        backoff = 0.5
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                metrics, step, size = self._queue[0]
            failed_since = None
            while True:
                if self._abandoned:
                    return
                try:
                    deliver_once(self.tracker, metrics, step, retry=failed_since is not None)
                    break
                except Exception:  # the server is away (or answers 5xx): retry in order, later
                    failed_since = failed_since or time.monotonic()
                    time.sleep(backoff)
                    backoff = min(2 * backoff, self.max_backoff_s)
            if failed_since is not None:
                self.outage_s += time.monotonic() - failed_since
                backoff = 0.5
            with self._cond:
                self._queue.popleft()
                self._pending_bytes -= size
                self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def close_spool(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Wait until every record is delivered; then remove the file. Raise TrackingOutage if not."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._queue and time.monotonic() < deadline:
                self._cond.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            left = len(self._queue)
        if left:
            self._abandoned = True  # the file keeps every record; `--flush` skips those the run holds
            raise TrackingOutage(f"the tracking server {getattr(self.tracker, 'tracking_uri', '')} did not take "
                                 f"{left} metric record(s) of run {self.run_id} within {timeout_s:.0f} s after "
                                 f"training; they are in {self.path}: deliver them with "
                                 f"`clipray runs --flush {self.path.parent}`")
        self.path.unlink(missing_ok=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tracker, name)


def deliver_once(tracker: Any, metrics: Mapping[str, float], step: int, *, retry: bool) -> None:
    """Log one record; on a retry leave out the keys the run holds at `step` already."""
    if retry and hasattr(tracker, "logged_steps"):
        metrics = {k: v for k, v in metrics.items() if step not in tracker.logged_steps(k)}
    if metrics:
        tracker.log_metrics(metrics, step)


def flush_directory(directory: str | os.PathLike[str]) -> dict[str, int]:
    """`clipray runs --flush DIR`: deliver the records of every spool file in DIR, skipping the
    (key, step) pairs each run already holds; remove each file once delivered. Records per file."""
    files = sorted(Path(directory).glob("*.jsonl"))
    if not files:
        raise MissingFileError(f"no spool files (*.jsonl) in {directory}")
    return {str(path): flush_file(path) for path in files}


def flush_file(path: Path) -> int:
    """Deliver one spool file's records the run does not hold yet, then remove the file."""
    from clipray.tracking.tracker import MlflowTracker

    lines = path.read_text().splitlines()
    if not lines:  # its writer died as it created it
        path.unlink()
        return 0
    header = json.loads(lines[0])
    tracker = MlflowTracker(header["tracking_uri"], header["run_id"])
    held: dict[str, set[int]] = {}
    delivered = 0
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short when its writer died
        step = int(record["step"])
        metrics = {}
        for key, value in record["metrics"].items():
            if key not in held:
                held[key] = tracker.logged_steps(key)
            if step not in held[key]:
                metrics[key] = value
                held[key].add(step)
        if metrics:
            tracker.log_metrics(metrics, step)
            delivered += 1
    path.unlink()
    return delivered
