"""The Ray Data knobs clipray sets for its reads and workers, and that a user's own value wins."""

from __future__ import annotations

import io
import os
import sys

from clipray.data.sources import FOOTER_ACTORS_ENV, _env_default
from clipray.runtime import PROGRESS_BARS_OFF_ENV, READER_CPU_ENV, quiet_progress_bars, worker_env


def test_footer_actor_default_is_scoped_and_yields_to_the_user(monkeypatch):
    monkeypatch.delenv(FOOTER_ACTORS_ENV, raising=False)
    with _env_default(FOOTER_ACTORS_ENV, "1"):
        assert os.environ[FOOTER_ACTORS_ENV] == "1"
    assert FOOTER_ACTORS_ENV not in os.environ  # not left behind for the next, larger listing
    monkeypatch.setenv(FOOTER_ACTORS_ENV, "16")
    with _env_default(FOOTER_ACTORS_ENV, "1"):
        assert os.environ[FOOTER_ACTORS_ENV] == "16"
    assert os.environ[FOOTER_ACTORS_ENV] == "16"


def test_worker_env_leaves_values_already_set_alone(monkeypatch):
    monkeypatch.delenv(READER_CPU_ENV, raising=False)
    assert worker_env()[READER_CPU_ENV] == "0"  # Arrow's own default: a thread per core
    # Set by the user, or by a submitted job's runtime_env (which Ray refuses to merge with a
    # driver's runtime_env naming the same variable): not repeated.
    monkeypatch.setenv(READER_CPU_ENV, "8")
    assert READER_CPU_ENV not in worker_env()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_worker_progress_bars_are_off_only_when_the_driver_writes_to_a_file(monkeypatch):
    monkeypatch.delenv(PROGRESS_BARS_OFF_ENV, raising=False)
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a log file, a job's log, CI
    assert worker_env()[PROGRESS_BARS_OFF_ENV] == "1"
    monkeypatch.setattr(sys, "stdout", _Terminal())  # bars redraw in place on a terminal
    assert PROGRESS_BARS_OFF_ENV not in worker_env()
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setenv(PROGRESS_BARS_OFF_ENV, "0")  # the user's choice wins
    assert PROGRESS_BARS_OFF_ENV not in worker_env()


def test_driver_context_loses_its_bars_too(monkeypatch):
    """Ray Train hands the driver's Ray Data context to its workers: the variable alone would
    come too late for a driver that imported ray.data already."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    monkeypatch.setattr(ctx, "enable_progress_bars", True)
    monkeypatch.delenv(PROGRESS_BARS_OFF_ENV, raising=False)
    monkeypatch.setattr(sys, "stdout", _Terminal())
    quiet_progress_bars()
    assert ctx.enable_progress_bars
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    quiet_progress_bars()
    assert not ctx.enable_progress_bars
