"""A spot preemption end to end: Ray's own notice (a node drain with reason PREEMPTION, what the
autoscaler issues on a spot notice), then the node goes.

A 3-node local cluster (head + two training nodes, one worker each, `train.num_workers: [1, 2]`)
trains the tiny CLIP with `train.checkpoint_every` larger than the run, so no periodic checkpoint
is ever written. The run is held at step 6; the test drains training node A
(`ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION`) and lets it go on: from the notice on,
every step is checkpointed. Held again at the end of step 10 (before its checkpoint), the test
kills node A. The run restarts from checkpoint 9 on the one worker left, so it replays one step
(without the notice it would have replayed all 10), and finishes with every step logged once.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import clipray_cmd
from tests.e2e.test_elastic_e2e import (  # noqa: F401
    _lose_node,
    _tail,
    _wait,
    cluster,
    cluster_env,
    elastic_train_cmd,
    held_gates,
    two_training_nodes,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS, GLOBAL_BATCH, NOTICE_AT, KILL_AT = 14, 16, 6, 10


def test_preemption_notice_then_node_loss_replays_one_step(cluster, tmp_path: Path, short_tmp: Path):  # noqa: F811
    from clipray.data.synth import write_synthetic

    data = tmp_path / "data"
    write_synthetic(data, (STEPS + 8) * GLOBAL_BATCH, shards=4, seed=5, image_size=32, eval_per_class=1, bad_rows=0)
    node_a = two_training_nodes(cluster)
    samples = tmp_path / "samples"
    gates = held_gates(tmp_path, "notice", "kill")
    env = cluster_env(cluster, tmp_path, short_tmp, RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S="0.5",
                      CLIPRAY_FAULT=f"step@{NOTICE_AT}:hold={gates[0]},step@{KILL_AT}:hold={gates[1]}")
    cmd = elastic_train_cmd(data, samples, tmp_path, STEPS, GLOBAL_BATCH,
                            "train.elastic_resize_interval_s=600", "train.checkpoint_every=1000")
    checkpoints = tmp_path / "runs"
    with (tmp_path / "train.out").open("w") as out_f, (tmp_path / "train.err").open("w") as err_f, \
            subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out_f, stderr=err_f) as proc:
        _wait(proc, samples, tmp_path, f"step {NOTICE_AT} on 2 workers",
              lambda lines: sum(ln["world_size"] == 2 and ln["step"] == NOTICE_AT for ln in lines) == 2)
        assert not list(checkpoints.glob("*/checkpoints/step_*")), "a checkpoint before the notice"
        drained = subprocess.run(
            [str(Path(clipray_cmd()[0]).parent / "ray"), "drain-node", "--address", cluster.address,
             "--node-id", node_a.node_id, "--reason", "DRAIN_NODE_REASON_PREEMPTION",
             "--reason-message", "spot instance reclaimed", "--deadline-remaining-seconds", "120"],
            env=env, capture_output=True, text=True, timeout=60)
        assert drained.returncode == 0, drained.stderr[-2000:]
        time.sleep(3)  # the preemption watcher polls every 0.5 s
        gates[0].unlink()
        _wait(proc, samples, tmp_path, f"step {KILL_AT}",
              lambda lines: sum(ln["step"] == KILL_AT for ln in lines) == 2
              and bool(list(checkpoints.glob(f"*/checkpoints/step_{KILL_AT - 1:08d}/COMMITTED"))))
        _lose_node(cluster, node_a)
        gates[1].unlink()
        proc.wait(timeout=600)
    assert proc.returncode == 0, _tail(tmp_path)
    out = (tmp_path / "train.out").read_text()
    assert "preemption notice at step" in out, _tail(tmp_path)
    run_id = next(line for line in out.splitlines() if line.startswith("mlflow_run_id: ")).split()[-1]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == list(range(1, STEPS + 1))
    resumed = [int(m.value) for m in client.get_metric_history(run_id, "train/resumed_from_step")]
    assert resumed and resumed[0] == KILL_AT - 1, resumed  # one step replayed
    assert run.data.tags.get("clipray.restart.1.cause"), run.data.tags
