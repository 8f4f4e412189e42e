"""Metrics logged as soon as they exist, exactly once per (metric, step) across restarts; and a
log of the samples trained on.

A restarted worker group resumes from the latest checkpoint and replays the steps after it (and a
run that restarts before its first checkpoint replays from step 1). Those steps were logged by the
lost group already, so logging them again would put each twice into MLflow's metric history (it
accepts the same step more than once). `ExactlyOnceTracker` logs every step immediately (the run
shows its metrics while it trains) and, on its first write of each metric key, asks the tracker
which steps of that key the run already holds; replayed steps that are there are dropped, those
that are not (the lost group died before logging them) are logged. So the history holds every
step once, as observed in MLflow, whatever the checkpoint interval.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clipray.tracking import Tracker


class ExactlyOnceTracker:
    """Wraps a Tracker: `log_metrics` writes at once, skipping (key, step) pairs the run holds.

    A tracker without `logged_steps(key)` (one that cannot say what it holds) gets every record.
    """

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.run_id = getattr(tracker, "run_id", None)
        self._held: dict[str, set[int]] = {}  # per key: the steps the run held when this process started

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        logged_steps = getattr(self.tracker, "logged_steps", None)
        if logged_steps is not None:
            for key in metrics:
                if key not in self._held:
                    self._held[key] = set(logged_steps(key))
            metrics = {k: v for k, v in metrics.items() if step not in self._held[k]}
        if metrics:
            self.tracker.log_metrics(metrics, step)
            for key in metrics:  # an in-process rollback replays steps this process logged
                self._held.setdefault(key, set()).add(step)

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
