"""Elastic training end to end on a 2-node local Ray cluster: lose a node, shrink, grow back.

The cluster (`ray.cluster_utils.Cluster`, real raylets on loopback): a head with CPUs for the
driver, the Train controller and the data actors, and two "training nodes" that each advertise one
unit of a custom resource that every training worker needs (`train.resources_per_worker`), so that
each node holds exactly one worker. `clipray train` runs with `train.num_workers: [1, 2]`:

1. it starts on 2 workers (one per training node) and waits at step 8 (a fault-injection gate);
2. the test kills one training node outright (no graceful shutdown, as a lost spot instance);
   the run restarts from its latest checkpoint on the 1 worker that still fits;
3. the test adds a training node again; the run notices within `train.elastic_resize_interval_s`
   and restarts from its latest checkpoint on 2 workers. A second gate near the end keeps the run
   going until the test has seen that.

Checked from the MLflow run and the per-step sample log: `train/world_size` goes 2 -> 1 -> 2, every
step 1..N is logged exactly once, the global batch is 16 rows at every step whatever the world size,
both restarts are counted with their causes, and, counting the steps replayed after a checkpoint
only once, every key of the first epoch is trained on exactly once: none twice and none skipped.
The dataset holds 40 global batches, so the shrink and the growth both fall inside that epoch and
the run ends in the second one.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import clipray_cmd
from tests.support.pipelines import tiny_run
from tests.support.rayhead import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS, GLOBAL_BATCH, CHECKPOINT_EVERY = 50, 16, 4
EPOCH_STEPS = 40
ROWS = EPOCH_STEPS * GLOBAL_BATCH  # the first epoch ends at step 40, before the run does
TRAINING_NODE = {"num_cpus": 1, "resources": {"clipray_trainer": 1}, "object_store_memory": 150 * 2**20}


@pytest.fixture
def cluster(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("TMPDIR", str(short_tmp))
    (short_tmp / "ray").mkdir()  # where Ray records the address of the cluster it started
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # The head is the first node added, inside the try: a start that fails half-way still stops
    # whatever it started.
    c = Cluster(initialize_head=False, connect=False, shutdown_at_exit=False)
    try:
        c.add_node(num_cpus=2, object_store_memory=300 * 2**20,
                   # A killed node is declared dead in ~1.5 s, not ~15 s: until then its
                   # resources still count, and a restart would wait for them.
                   _system_config={"health_check_period_ms": 500, "health_check_failure_threshold": 3},
                   temp_dir=str(short_tmp / "ray"),
                   # As on a real cluster: after a node loss Ray Data asks the state API (served by
                   # the dashboard) about its dead actors.
                   include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port())
        yield c
    finally:
        c.shutdown()


def two_training_nodes(cluster) -> object:
    """Add two one-worker training nodes to the head-only cluster; returns the first."""
    node_a = cluster.add_node(**TRAINING_NODE)
    cluster.add_node(**TRAINING_NODE)
    cluster.wait_for_nodes()
    return node_a


def held_gates(tmp_path: Path, *names: str) -> list[Path]:
    """Gate files for `CLIPRAY_FAULT=step@S:hold=GATE`: the run waits at step S while its gate exists."""
    gates = [tmp_path / f"gate-{name}" for name in names]
    for gate in gates:
        gate.touch()
    return gates


def cluster_env(cluster, tmp_path: Path, short_tmp: Path, **extra: str) -> dict[str, str]:
    """Environment of a `clipray train` driver on `cluster`, with its own MLflow store and temp dir."""
    return dict(os.environ, RAY_ADDRESS=cluster.address, RAY_AUTH_MODE="disabled", TMPDIR=str(short_tmp),
                MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db", PYTHONUNBUFFERED="1",
                RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5", **extra)


def elastic_train_cmd(data: Path, samples: Path, tmp_path: Path, steps: int, global_batch: int,
                      *settings: str) -> list[str]:
    """`clipray train` of the tiny CLIP on 1 to 2 workers of the training nodes, logging its samples."""
    return clipray_cmd(*tiny_run("data.chunk_files=4", f"train.steps={steps}", f"train.global_batch_size={global_batch}",
                                 "train.num_workers=[1, 2]", "train.resources_per_worker.clipray_trainer=1", *settings,
                                 f"train.sample_log={samples}", data=data, runs=tmp_path / "runs"))


def _steps(samples: Path) -> list[dict]:
    lines = []
    for f in sorted(samples.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line being written right now
                lines.append(json.loads(line))
    return lines


def _wait(proc: subprocess.Popen, samples: Path, logs: Path, what: str, done, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done(_steps(samples)):
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}:\n{_tail(logs)}")
        time.sleep(0.5)
    proc.kill()
    proc.wait()
    pytest.fail(f"timed out waiting for {what}:\n{_tail(logs)}")


def _tail(logs: Path) -> str:
    """The run's own lines and the Train controller's decisions (progress bars left out)."""
    keep = ("[clipray]", "TrainController", "Error", "error", "Traceback")
    lines = [ln for f in ("train.out", "train.err") for ln in (logs / f).read_text(errors="replace").splitlines()
             if any(k in ln for k in keep) and "Running Dataset" not in ln]
    return f"(full output in {logs})\n" + "\n".join(lines[-80:])


def _lose_node(cluster, node) -> None:
    """The node goes away at once, as a lost machine does: its raylet and every worker process on it.

    `remove_node` kills the node's Ray daemons; its worker processes would notice only later and
    keep training in the meantime, which a real loss of the machine does not allow.
    """
    import psutil
    from ray._private import ray_constants

    raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
    workers = raylet.children(recursive=True)
    cluster.remove_node(node, allow_graceful=False)
    for proc in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def test_node_lost_then_added_back(cluster, tmp_path: Path, short_tmp: Path):
    from clipray.data.synth import write_synthetic

    data = tmp_path / "data"
    write_synthetic(data, ROWS, shards=4, seed=5, image_size=32, eval_per_class=1, bad_rows=0)
    node_a = two_training_nodes(cluster)
    samples = tmp_path / "samples"
    gates = held_gates(tmp_path, "shrink", "grow")
    env = cluster_env(cluster, tmp_path, short_tmp,
                      CLIPRAY_FAULT=f"step@8:hold={gates[0]},step@{STEPS - 6}:hold={gates[1]}")
    cmd = elastic_train_cmd(data, samples, tmp_path, STEPS, GLOBAL_BATCH, "train.elastic_resize_interval_s=3",
                            f"train.checkpoint_every={CHECKPOINT_EVERY}", "train.max_failures=2")
    with (tmp_path / "train.out").open("w") as out_f, (tmp_path / "train.err").open("w") as err_f, \
            subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out_f, stderr=err_f) as proc:
        _wait(proc, samples, tmp_path, "8 steps on 2 workers",
              lambda lines: sum(ln["world_size"] == 2 and ln["step"] == 8 for ln in lines) == 2)
        _lose_node(cluster, node_a)
        gates[0].unlink()
        _wait(proc, samples, tmp_path, "a step on 1 worker after the node loss",
              lambda lines: any(ln["world_size"] == 1 for ln in lines))
        cluster.add_node(**TRAINING_NODE)
        _wait(proc, samples, tmp_path, "a step on 2 workers again",
              lambda lines: any(ln["world_size"] == 2 and ln["time"] > max(x["time"] for x in lines
                                                                           if x["world_size"] == 1)
                                for ln in lines))
        gates[1].unlink()
        proc.wait(timeout=600)
    assert proc.returncode == 0, _tail(tmp_path)
    out = (tmp_path / "train.out").read_text()

    run_id = next(line for line in out.splitlines() if line.startswith("mlflow_run_id: ")).split()[-1]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == list(range(1, STEPS + 1)), steps  # none missing, none twice

    # The world size, in step order, shrank to 1 and grew back to 2.
    sizes = [int(m.value) for m in sorted(client.get_metric_history(run_id, "train/world_size"),
                                          key=lambda m: m.step)]
    phases = [s for i, s in enumerate(sizes) if i == 0 or s != sizes[i - 1]]
    assert phases == [2, 1, 2], sizes
    # Two restarts: the node loss, then the growth (one more if Ray retried a start that timed out).
    restarts = int(client.get_metric_history(run_id, "train/restarts")[-1].value)
    causes = [run.data.tags.get(f"clipray.restart.{n}.cause") for n in range(1, restarts + 1)]
    assert restarts >= 2 and all(causes), causes
    assert "died" in causes[0] or "Error" in causes[0], causes
    assert causes[-1] == "elastic resize: 1 -> 2 workers", causes

    # The samples that count: per step, those of the attempt that got past it (its last writer).
    lines = _steps(samples)
    final: dict[int, list[dict]] = defaultdict(list)  # step -> lines of the attempt that logged it
    for step in range(1, STEPS + 1):
        writers = [ln for ln in lines if ln["step"] == step]
        last_time = max(ln["time"] for ln in writers)
        size = next(ln["world_size"] for ln in writers if ln["time"] == last_time)
        final[step] = sorted(writers, key=lambda ln: ln["time"])[-size:]
        assert {ln["world_size"] for ln in final[step]} == {size} and len({ln["rank"] for ln in final[step]}) == size
        assert sum(len(ln["keys"]) for ln in final[step]) == GLOBAL_BATCH, (step, final[step])
    epochs = {step: {ln["epoch"] for ln in step_lines} for step, step_lines in final.items()}
    assert epochs == {step: {0 if step <= EPOCH_STEPS else 1} for step in range(1, STEPS + 1)}, epochs
    dataset = set(pq.read_table(data / "train", columns=["key"]).column("key").to_pylist())
    assert len(dataset) == ROWS
    kept = {epoch: Counter(k for step_lines in final.values() for ln in step_lines if ln["epoch"] == epoch
                           for k in ln["keys"]) for epoch in (0, 1)}
    for counts in kept.values():
        assert max(counts.values()) == 1  # no sample counted twice across the shrink and the growth
        assert set(counts) <= dataset
    # The first epoch, which held both restarts, trained on every sample: the data cursor skipped none.
    assert set(kept[0]) == dataset, sorted(dataset - set(kept[0]))[:20]
