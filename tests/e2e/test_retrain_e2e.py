"""Two scheduled retraining runs over a partitioned dataset that grows between them, submitted by
`clipray scheduler` to a real Ray head with token auth; the scheduler is killed between them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from croniter import croniter

from tests.conftest import ROOT, clipray_cmd, run_clipray
from tests.support.rayhead import RayHead, ray_head

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def head() -> Iterator[RayHead]:
    with ray_head(auth=True, num_cpus=2) as h:
        yield h


def _wait_job(head: RayHead, job_id: str, timeout: float = 600) -> str:
    from clipray.jobs import connect

    client = connect(head.address)  # token from RAY_AUTH_TOKEN, set by the test
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = str(client.get_job_status(job_id).value)
        except RuntimeError:  # not submitted yet
            status = "NONE"
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            assert status == "SUCCEEDED", client.get_job_logs(job_id)[-5000:]
            return client.get_job_logs(job_id)
        time.sleep(2)
    raise TimeoutError(job_id)


def test_two_scheduled_runs_new_partition_warm_start_and_champion(head: RayHead, tiny_data: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("RAY_AUTH_TOKEN", head.token or "")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)

    root = tmp_path / "web"
    shards = sorted((tiny_data / "train").glob("*.parquet"))
    (root / "dt=2026-11-01").mkdir(parents=True)
    for s in shards[:2]:
        shutil.copy(s, root / "dt=2026-11-01" / s.name)
    env = head.client_env()
    env.update(HOME=str(tmp_path), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db", PYTHONUNBUFFERED="1")
    state = str(tmp_path / "sched.db")
    add = run_clipray("schedule", "add", "nightly", str(ROOT / "pipelines/tiny/clip-tiny.yaml"),
                      "--cron", "0 3 * * *", "--start", "2026-11-01T00:00", "--address", head.address,
                      "--state", state, "--set", f"data.source={root}",
                      "--set", f"eval.zeroshot_source={tiny_data / 'eval'}",
                      "--set", f"train.storage_path={tmp_path / 'runs'}", env=env, cwd=tmp_path)
    assert add.returncode == 0 and "next run 2026-11-01 03:00 UTC" in add.stdout, add.stderr

    # Run 1 by the scheduler service (its first tick finds the 2026-11-01 03:00 window due).
    with open(tmp_path / "scheduler.log", "w") as log:
        service = subprocess.Popen(clipray_cmd("scheduler", "--state", state, "--interval", "2"), env=env,
                                   cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            logs1 = _wait_job(head, "clipray-nightly-20261101T0300-a0")
        finally:
            os.killpg(service.pid, signal.SIGKILL)  # killed, not stopped: no chance to save anything
            service.wait(timeout=30)
    assert "partitions dt=2026-11-01; warm start from version none (fresh); registered version 1" in logs1
    listed = run_clipray("schedule", "list", "--state", state, env=env, cwd=tmp_path)
    assert "nightly" in listed.stdout and "0 3 * * *" in listed.stdout, "the schedule survived the kill"

    # New data lands; the restarted scheduler takes the next window (the next 03:00 after the real
    # now, since the service advanced the schedule past the ticks it missed).
    (root / "dt=2026-11-02").mkdir()
    shutil.copy(shards[2], root / "dt=2026-11-02" / shards[2].name)
    due = croniter("0 3 * * *", datetime.now(timezone.utc)).get_next(datetime)
    window = due.strftime("%Y%m%dT%H%M")
    tick = run_clipray("scheduler", "--state", state, "--once", "--now", (due + timedelta(minutes=1)).isoformat(),
                       env=env, cwd=tmp_path)
    assert tick.returncode == 0 and f"submitted clipray-nightly-{window}-a0" in tick.stdout, tick.stdout + tick.stderr
    logs2 = _wait_job(head, f"clipray-nightly-{window}-a0")
    assert "partitions dt=2026-11-02; warm start from version 1; registered version 2" in logs2, logs2[-3000:]

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    v1, v2 = (client.get_model_version("clip-tiny", v) for v in ("1", "2"))
    assert json.loads(v1.tags["clipray.partitions"]) == ["dt=2026-11-01"]
    assert json.loads(v2.tags["clipray.partitions"]) == ["dt=2026-11-02"]
    assert v2.tags["clipray.parent_version"] == "1"
    params2 = client.get_run(v2.run_id).data.params  # run 2 was configured to read only the new partition
    assert any("2026-11-02" in v for v in params2.values()), params2
    assert not any("2026-11-01" in v for v in params2.values()), params2
    rows_new = sum(pq.read_metadata(s).num_rows for s in shards[2:])
    assert client.get_run(v2.run_id).data.metrics["data/rows_in"] % rows_new == 0  # whole epochs of it
    new, old = (float(x) for x in logs2.split("score ")[1].split(":")[0].split(" vs champion "))
    champion = str(client.get_model_version_by_alias("clip-tiny", "champion").version)
    assert champion == ("2" if new > old else "1"), (new, old, champion)

    # A retried window never registers twice.
    again = run_clipray("retrain", str(ROOT / "pipelines/tiny/clip-tiny.yaml"), "--schedule", "nightly",
                        "--window", window, "--set", f"data.source={root}",
                        "--set", f"eval.zeroshot_source={tiny_data / 'eval'}", env=env, cwd=tmp_path)
    assert again.returncode == 0 and "registered by an earlier attempt" in again.stdout, again.stderr[-3000:]
    assert len(client.search_model_versions("name='clip-tiny'")) == 2
