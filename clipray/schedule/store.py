"""Schedules and their submissions in one SQLite file (the scheduler's only state).

Every change is one transaction, so a scheduler killed at any point restarts from a consistent
state: a submission is recorded (status `pending`) *before* it is sent to Ray, with a
deterministic submission id, and sent again after a restart; Ray refuses a duplicate id, which
the scheduler reads as "already submitted".
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from clipray.errors import InvalidInputError, UnknownNameError

SCHEMA = """
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY, cron TEXT NOT NULL, pipeline TEXT NOT NULL, overrides TEXT NOT NULL,
    address TEXT, max_retries INTEGER NOT NULL, next_due REAL NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS submissions (
    submission_id TEXT PRIMARY KEY, schedule TEXT NOT NULL, window TEXT NOT NULL,
    attempt INTEGER NOT NULL, status TEXT NOT NULL, message TEXT, updated REAL NOT NULL
);
"""
OPEN = ("pending", "submitted")  # not yet known to have ended


def next_after(cron: str, after: float) -> float:
    """The first cron tick strictly after `after` (UTC epoch seconds)."""
    from croniter import croniter

    base = datetime.fromtimestamp(after, tz=timezone.utc)
    return croniter(cron, base).get_next(float)


def validate_cron(cron: str) -> str:
    from croniter import croniter

    if not croniter.is_valid(cron):
        raise InvalidInputError(f"not a valid cron expression: {cron!r} (five fields, e.g. '0 3 * * *')")
    return cron


@dataclass
class Schedule:
    name: str
    cron: str
    pipeline: str
    overrides: list[str] = field(default_factory=list)
    address: str | None = None
    max_retries: int = 2
    next_due: float = 0.0


@dataclass
class Submission:
    submission_id: str
    schedule: str
    window: str
    attempt: int
    status: str
    message: str | None = None


class ScheduleStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def add(self, s: Schedule, now: float | None = None) -> Schedule:
        validate_cron(s.cron)
        now = time.time() if now is None else now
        s.next_due = next_after(s.cron, now)
        try:
            self.db.execute("INSERT INTO schedules VALUES (?,?,?,?,?,?,?,?)",
                            (s.name, s.cron, s.pipeline, json.dumps(s.overrides), s.address, s.max_retries,
                             s.next_due, now))
        except sqlite3.IntegrityError:
            raise InvalidInputError(f"schedule {s.name!r} exists in {self.path}; remove it first") from None
        return s

    def remove(self, name: str) -> bool:
        return self.db.execute("DELETE FROM schedules WHERE name=?", (name,)).rowcount > 0

    def schedules(self) -> list[Schedule]:
        rows = self.db.execute("SELECT name, cron, pipeline, overrides, address, max_retries, next_due "
                               "FROM schedules ORDER BY name").fetchall()
        return [Schedule(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6]) for r in rows]

    def get(self, name: str) -> Schedule:
        for s in self.schedules():
            if s.name == name:
                return s
        raise UnknownNameError(f"no schedule {name!r} in {self.path}")

    def claim_window(self, s: Schedule, window: str, submission_id: str, next_due: float) -> None:
        """Record the window's first submission and advance the schedule, atomically."""
        with self._tx():
            self.db.execute("UPDATE schedules SET next_due=? WHERE name=?", (next_due, s.name))
            self.db.execute("INSERT OR IGNORE INTO submissions VALUES (?,?,?,?,?,?,?)",
                            (submission_id, s.name, window, 0, "pending", None, time.time()))

    def add_retry(self, prev: Submission, submission_id: str, status: str = "retried",
                  message: str | None = None) -> None:
        """End `prev` with `status` (`retried`, or `lost` for a job the cluster forgot) and record
        the next attempt of its window as pending, atomically."""
        with self._tx():
            self.db.execute("UPDATE submissions SET status=?, message=?, updated=? WHERE submission_id=?",
                            (status, message, time.time(), prev.submission_id))
            self.db.execute("INSERT OR IGNORE INTO submissions VALUES (?,?,?,?,?,?,?)",
                            (submission_id, prev.schedule, prev.window, prev.attempt + 1, "pending", None,
                             time.time()))

    def set_status(self, submission_id: str, status: str, message: str | None = None) -> None:
        self.db.execute("UPDATE submissions SET status=?, message=?, updated=? WHERE submission_id=?",
                        (status, message, time.time(), submission_id))

    def submissions(self, schedule: str | None = None, statuses: tuple[str, ...] | None = None) -> list[Submission]:
        q = "SELECT submission_id, schedule, window, attempt, status, message FROM submissions"
        rows = self.db.execute(q + " ORDER BY updated").fetchall()
        out = [Submission(*r) for r in rows]
        return [s for s in out if (schedule is None or s.schedule == schedule)
                and (statuses is None or s.status in statuses)]

    def _tx(self):  # type: ignore[no-untyped-def]
        db = self.db

        class _Tx:
            def __enter__(self) -> None:
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_: object) -> None:  # type: ignore[no-untyped-def]
                db.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()
