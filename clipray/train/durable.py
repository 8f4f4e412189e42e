"""Metrics that reach MLflow only once their step is durable, and a log of the samples trained on.

A restarted worker group resumes from the latest checkpoint and replays the steps after it. If
those steps had been logged, MLflow would hold them twice (one metric history per run, with
duplicates). `DurableTracker` buffers per-step metrics and writes them when the checkpoint that
covers them has been committed (`flush`), so each step is logged exactly once, before or after a
restart. The last step of a run is always checkpointed, so nothing stays buffered at the end.

The commit and the flush cannot be one atomic act: a worker group stopped between them (a lost
node, an elastic resize) resumes *after* steps it never logged. So each checkpoint also carries the
metrics it covers (`pending`), and a resumed run logs those of them that MLflow does not hold yet
(`recover`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clipray.tracking import Tracker


class DurableTracker:
    """Wraps a Tracker: `log_metrics` buffers, `flush` (after a committed checkpoint) writes."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.run_id = getattr(tracker, "run_id", None)
        self._pending: list[tuple[dict[str, float], int]] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._pending.append((dict(metrics), step))

    def pending(self) -> list[tuple[dict[str, float], int]]:
        """The buffered (metrics, step) pairs, to store in the checkpoint that covers them."""
        return [(dict(metrics), step) for metrics, step in self._pending]

    def recover(self, pending: Sequence[tuple[Mapping[str, float], int]]) -> None:
        """Log the checkpoint's `pending` metrics whose step the tracker does not hold yet."""
        logged_steps = getattr(self.tracker, "logged_steps", None)
        if logged_steps is None:
            return  # a tracker that cannot tell what it holds: a gap is better than a duplicate
        known: dict[str, set[int]] = {}
        for metrics, step in pending:
            if not metrics:
                continue
            key = next(iter(metrics))
            if key not in known:
                known[key] = logged_steps(key)
            if step not in known[key]:
                self.tracker.log_metrics(metrics, step)

    def flush(self) -> None:
        for metrics, step in self._pending:
            self.tracker.log_metrics(metrics, step)
        self._pending.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tracker, name)


class SampleLog:
    """Appends `{step, epoch, rank, world_size, pid, keys}` lines to `<dir>/rank<R>-<pid>.jsonl`
    (train.sample_log)."""

    def __init__(self, directory: str, rank: int, world_size: int = 1) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.path = Path(directory) / f"rank{rank}-{os.getpid()}.jsonl"
        self.rank = rank
        self.world_size = world_size

    def write(self, step: int, epoch: int, keys: Sequence[str]) -> None:
        line = {"step": step, "epoch": epoch, "rank": self.rank, "world_size": self.world_size, "pid": os.getpid(), "time": time.time(),
                "keys": list(keys)}
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
