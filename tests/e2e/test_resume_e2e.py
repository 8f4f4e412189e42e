"""A lost driver, then `clipray train --resume RUN_ID`, with a non-finite step in the resumed part.

The first driver trains the tiny CLIP on 2 workers with checkpoints every 3 steps and is held at
the end of step 5 (`CLIPRAY_FAULT=step@5:hold=...`) until the checkpoint of step 3 is committed
and MLflow holds step 5; then its whole process group is SIGKILLed (the embedded Ray cluster dies
with it, as on a lost head pod). The resume must continue the same MLflow run from step 3 to
`train.steps` and end it FINISHED, every step in the metric history exactly once. In the resumed
part rank 1's loss at step 7 is made NaN (`nonfinite@7:rank=1`): both ranks skip that step
(`train/skipped_steps` = 1, no loss point at 7) and the final weights are finite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import suppress
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import clipray_cmd, run_clipray
from tests.support.pipelines import tiny_run
from tests.support.procs import kill_all_with_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 8


def test_driver_killed_then_resumed(tiny_data: Path, run_env, tmp_path: Path):
    args = tiny_run(f"train.steps={STEPS}", "train.global_batch_size=16", "train.checkpoint_every=3",
                    data=tiny_data, runs=tmp_path / "runs")
    gate = tmp_path / "gate"
    gate.write_text("hold")
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(clipray_cmd(*args), env=dict(run_env, CLIPRAY_FAULT=f"step@5:hold={gate}"), cwd=tmp_path,
                             stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    client = MlflowClient(run_env["MLFLOW_TRACKING_URI"])
    run_id = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.poll() is None:
            text = (tmp_path / "first.log").read_text()
            if run_id is None and "mlflow_run_id: " in text:  # printed as soon as the run exists
                run_id = text.split("mlflow_run_id: ", 1)[1].split()[0]
            committed = list((tmp_path / "runs").glob("*/checkpoints/step_00000003/COMMITTED"))
            if run_id and committed and 5 in {m.step for m in client.get_metric_history(run_id, "train/loss")}:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the first driver never reached step 5: " + (tmp_path / "first.log").read_text()[-4000:])
        # Metrics show before any checkpoint would have released them in the old design: 1-5 are there.
        assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == [1, 2, 3, 4, 5]
    finally:
        with suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        # The embedded Ray cluster (GCS, raylet, workers) goes too, as with a lost head pod: every
        # process started under this test's own TMPDIR. Only then does the hold at step 5 end.
        kill_all_with_env("TMPDIR", run_env["TMPDIR"])
        first.wait()
        log.close()
        gate.unlink(missing_ok=True)
    assert not list((tmp_path / "runs").glob("*/checkpoints/step_0000000[4-9]")), "the first driver went on"
    assert client.get_run(run_id).info.status == "RUNNING"  # a lost driver closes nothing

    changed = run_clipray(*args, "--set", "train.num_workers=2", "--set", "optim.lr=0.5", "--resume", run_id,
                          env=run_env, cwd=tmp_path, timeout=120)
    assert changed.returncode == 2 and "optim.lr" in changed.stderr and "Traceback" not in changed.stderr

    fault = f"nonfinite@7:rank=1:once={tmp_path / 'nan'}"
    proc = run_clipray(*args, "--resume", run_id, env=dict(run_env, CLIPRAY_FAULT=fault), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (tmp_path / "nan").exists(), "the non-finite fault never fired"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/lr")) == list(range(1, STEPS + 1))
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == [1, 2, 3, 4, 5, 6, 8]
    assert [m.value for m in client.get_metric_history(run_id, "train/resumed_from_step")] == [3.0]
    assert max(m.value for m in client.get_metric_history(run_id, "train/restarts")) == 1.0
    skipped = {m.step: m.value for m in client.get_metric_history(run_id, "train/skipped_steps")}
    assert skipped[6] == 0.0 and skipped[7] == 1.0 and skipped[8] == 1.0
    state = torch.load(Path(run.data.tags["clipray.checkpoint"]) / "state.pt", weights_only=False)
    assert state["step"] == STEPS and state["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in state["objective"]["model"].values() if v.is_floating_point())
