"""The scheduler service against a real Ray head: a failed run is retried within its bound, a
submission id sent twice (the scheduler died after sending, before recording) runs once, and a job
the cluster no longer knows is marked lost and retried, or reported when no retries are left.

The jobs are real `clipray retrain` runs of a pipeline without `eval.zeroshot_source`, which
`clipray retrain` refuses at once: each fails within seconds of starting, as a broken scheduled
run does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clipray.schedule.service import Scheduler, submission_id, window_id
from clipray.schedule.store import Schedule, ScheduleStore
from tests.conftest import ROOT
from tests.support.rayhead import RayHead, ray_head

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

T0 = 1_795_000_000.0  # 2026-11-18: schedules are added "then", so their first window is due at once


@pytest.fixture(scope="module")
def head() -> Iterator[RayHead]:
    with ray_head(auth=False, num_cpus=2) as h:
        yield h


@pytest.fixture
def client(head: RayHead, monkeypatch: pytest.MonkeyPatch):
    from clipray.jobs import connect

    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    return connect(head.address)


def _schedule(store: ScheduleStore, name: str, head: RayHead, tiny_data: Path, tmp_path: Path,
              max_retries: int) -> tuple[Schedule, str]:
    s = store.add(Schedule(name, "0 3 * * *", str(ROOT / "pipelines/tiny/clip-tiny.yaml"),
                           [f"data.source={tiny_data / 'train'}", "eval.zeroshot_source=null",
                            f"train.storage_path={tmp_path / 'runs'}"], head.address, max_retries), now=T0)
    return s, window_id(s.next_due)


def _wait_ended(client, job_id: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1)
    raise TimeoutError(job_id)


def _states(store: ScheduleStore, name: str) -> list[tuple[int, str]]:
    return sorted((x.attempt, x.status) for x in store.submissions(name))


def test_retry_duplicate_id_and_lost_job(head, client, tiny_data, tmp_path):
    store = ScheduleStore(tmp_path / "sched.db")
    log: list[str] = []
    sched = Scheduler(store, log=log.append)
    now = T0 + 10 * 86400  # every schedule added at T0 is due

    # -- a failed run is retried once (max_retries=1), then reported failed -----------------------
    s, window = _schedule(store, "broken", head, tiny_data, tmp_path, max_retries=1)
    a0, a1 = submission_id(s.name, window, 0), submission_id(s.name, window, 1)
    sched.tick(now)
    assert _states(store, "broken") == [(0, "submitted")], log

    # The scheduler dies after sending a0 and before recording it: the restarted one sends a0 again.
    store.set_status(a0, "pending")
    Scheduler(store, log=log.append).tick(now)
    assert f"[scheduler] broken: {a0} was already submitted" in log
    assert _states(store, "broken") == [(0, "submitted")]
    assert [j.submission_id for j in client.list_jobs()].count(a0) == 1  # Ray refused the duplicate

    assert _wait_ended(client, a0) == "FAILED"
    assert "retraining compares models on eval.zeroshot_source" in client.get_job_logs(a0)
    sched.tick(now)
    assert _states(store, "broken") == [(0, "retried"), (1, "pending")], log
    sched.tick(now)  # sends a1
    assert _states(store, "broken") == [(0, "retried"), (1, "submitted")], log
    assert _wait_ended(client, a1) == "FAILED"
    sched.tick(now)
    assert _states(store, "broken") == [(0, "retried"), (1, "failed")], log  # the bound: no attempt 2
    (last,) = [x for x in store.submissions("broken") if x.attempt == 1]
    assert last.message and last.message.startswith("failed: "), last.message
    assert f"[scheduler] broken: {a1} failed" in log[-1] and log[-1].endswith("no retries left")
    sched.tick(now)
    assert len(store.submissions("broken")) == 2 and a1 in [j.submission_id for j in client.list_jobs()]

    # -- a job the cluster forgot (deleted after it ended) is marked lost and its window retried ---
    s, window = _schedule(store, "forgotten", head, tiny_data, tmp_path, max_retries=1)
    b0, b1 = submission_id(s.name, window, 0), submission_id(s.name, window, 1)
    sched.tick(now)
    _wait_ended(client, b0)
    assert client.delete_job(b0)
    sched.tick(now)
    (lost,) = [x for x in store.submissions("forgotten") if x.attempt == 0]
    assert lost.status == "lost" and "no longer knows this job" in (lost.message or ""), lost
    sched.tick(now)
    assert _states(store, "forgotten") == [(0, "lost"), (1, "submitted")], log
    assert b1 in [j.submission_id for j in client.list_jobs()]

    # -- with no retries left, a lost job is reported, not resent -----------------------------------
    s, window = _schedule(store, "gone", head, tiny_data, tmp_path, max_retries=0)
    c0 = submission_id(s.name, window, 0)
    # Recorded as sent, to a head that has never seen it (as after the head was replaced).
    store.claim_window(s, window, c0, now + 86400)
    store.set_status(c0, "submitted")
    sched.tick(now)
    assert _states(store, "gone") == [(0, "lost")], log
    assert log[-1] == (f"[scheduler] gone: {c0} lost (the cluster at {head.address} no longer knows this job); "
                       "no retries left")
    assert c0 not in [j.submission_id for j in client.list_jobs()]
    _wait_ended(client, b1)  # nothing left running on the head when it stops
