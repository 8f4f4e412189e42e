"""Ray Data knobs clipray sets for its reads, and that a user's own value wins."""

from __future__ import annotations

import os

from clipray.data.sources import FOOTER_ACTORS_ENV, READER_THREADS_ENV, _env_default, worker_env


def test_worker_env_limits_parquet_reader_threads_unless_user_set(monkeypatch):
    monkeypatch.delenv(READER_THREADS_ENV, raising=False)
    assert worker_env() == {READER_THREADS_ENV: "1"}
    # A job whose runtime_env sets the variable and a ray.init that sets it too is refused by Ray,
    # so the user's value (in this process's environment, as a job's env_vars are) means: pass nothing.
    monkeypatch.setenv(READER_THREADS_ENV, "8")
    assert worker_env() == {}


def test_footer_actor_default_is_scoped_and_yields_to_the_user(monkeypatch):
    monkeypatch.delenv(FOOTER_ACTORS_ENV, raising=False)
    with _env_default(FOOTER_ACTORS_ENV, "1"):
        assert os.environ[FOOTER_ACTORS_ENV] == "1"
    assert FOOTER_ACTORS_ENV not in os.environ  # not left behind for the next, larger listing
    monkeypatch.setenv(FOOTER_ACTORS_ENV, "16")
    with _env_default(FOOTER_ACTORS_ENV, "1"):
        assert os.environ[FOOTER_ACTORS_ENV] == "16"
    assert os.environ[FOOTER_ACTORS_ENV] == "16"
