"""`clipray runs` over a real MLflow store: newest first, key metrics, how to open each; the store
defaults to ./mlruns.db in the working directory, as `clipray train` writes it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import run_clipray


def _run(client: MlflowClient, experiment: str, pipeline: str, loss: float) -> str:
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, tags={"clipray.pipeline": pipeline})
    client.log_metric(run.info.run_id, "train/loss", loss, step=6)
    client.log_metric(run.info.run_id, "eval/zeroshot_top1", 0.25, step=6)
    client.set_terminated(run.info.run_id)
    time.sleep(0.01)  # distinct start times
    return run.info.run_id


def test_runs_lists_newest_first_from_the_default_store(tmp_path: Path):
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(store)
    first = _run(client, "clip-tiny", "clip-tiny", 3.5)
    second = _run(client, "clip-tiny", "clip-tiny", 2.5)
    other = _run(client, "albef-tiny", "albef-tiny", 9.0)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}

    proc = run_clipray("runs", env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = [line.split()[0] for line in proc.stdout.splitlines() if not line.startswith(" ")]
    assert ids == [other[:12], second[:12], first[:12]]
    assert "loss=2.5  zeroshot_top1=0.25" in proc.stdout
    assert f"mlflow ui --backend-store-uri {store}" in proc.stdout

    proc = run_clipray("runs", "--experiment", "clip-tiny", "--limit", "1", env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line.split()[0] for line in proc.stdout.splitlines() if not line.startswith(" ")] == [second[:12]]

    proc = run_clipray("runs", "--experiment", "nope", env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "no MLflow experiment 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_running_run_without_heartbeat_is_marked_stale(tmp_path: Path):
    from clipray.tracking.runs import HEARTBEAT_TAG, STALE_S, format_runs, recent_runs

    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(store)
    exp_id = client.create_experiment("clip-tiny")
    now = int(time.time())
    lost = client.create_run(exp_id, tags={HEARTBEAT_TAG: str(now - int(STALE_S) - 5)}).info.run_id
    alive = client.create_run(exp_id, tags={HEARTBEAT_TAG: str(now)}).info.run_id
    done = client.create_run(exp_id, tags={HEARTBEAT_TAG: str(now - 10 * int(STALE_S))}).info.run_id
    client.set_terminated(done)
    status = {r["run_id"]: r["status"] for r in recent_runs(store)}
    assert status == {lost: "RUNNING (stale: driver lost?)", alive: "RUNNING", done: "FINISHED"}
    assert "RUNNING (stale: driver lost?)" in format_runs(recent_runs(store))
