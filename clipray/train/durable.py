"""Metrics that reach MLflow only once their step is durable, and a log of the samples trained on.

A restarted worker group resumes from the latest checkpoint and replays the steps after it. If
those steps had been logged, MLflow would hold them twice (one metric history per run, with
duplicates). `DurableTracker` buffers per-step metrics and writes them when the checkpoint that
covers them has been committed (`flush`), so each step is logged exactly once, before or after a
restart. The last step of a run is always checkpointed, so nothing stays buffered at the end.
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

    def flush(self) -> None:
        for metrics, step in self._pending:
            self.tracker.log_metrics(metrics, step)
        self._pending.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tracker, name)


class SampleLog:
    """Appends `{step, epoch, rank, pid, keys}` lines to `<dir>/rank<R>-<pid>.jsonl` (train.sample_log)."""

    def __init__(self, directory: str, rank: int) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.path = Path(directory) / f"rank{rank}-{os.getpid()}.jsonl"
        self.rank = rank

    def write(self, step: int, epoch: int, keys: Sequence[str]) -> None:
        line = {"step": step, "epoch": epoch, "rank": self.rank, "pid": os.getpid(), "time": time.time(),
                "keys": list(keys)}
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
