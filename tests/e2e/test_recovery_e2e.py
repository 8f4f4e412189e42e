"""Fault recovery end to end: a training worker is SIGKILLed mid-run and Ray Train restarts it.

Data: 160 clean rows in 4 files, 8 rows of each file a byte-identical copy of another row's image
there (so 128 rows after dedup), 2 files per chunk, global batch 16 on 2 workers, so one epoch is
8 steps = the run. Checkpoints every 3 steps (mid-chunk, so the resumed chunk skips the keys the
checkpoint recorded). Checked: the run finishes at train.steps in the same MLflow run, every
step logged exactly once, train/restarts = 1 with a cause tag, and every key of the dataset
trained on exactly once, apart from the keys of steps replayed after the checkpoint, with
exactly one key of each pair of identical images: also when the pair straddles the checkpoint.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_clipray
from tests.support.pipelines import tiny_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS, GLOBAL_BATCH, CHECKPOINT_EVERY = 8, 16, 3
SHARDS, COPIES = 4, 8  # per file: rows COPIES.. copy the images of rows 0..COPIES-1


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clipray.data.synth import write_synthetic

    out = tmp_path_factory.mktemp("clean")
    write_synthetic(out, STEPS * GLOBAL_BATCH + SHARDS * COPIES, shards=SHARDS, seed=3, image_size=32,
                    eval_per_class=1, bad_rows=0)
    for path in sorted((out / "train").glob("*.parquet")):
        table = pq.read_table(path)
        jpg = table.column("jpg").to_pylist()
        jpg[COPIES : 2 * COPIES] = jpg[:COPIES]
        pq.write_table(table.set_column(table.column_names.index("jpg"), "jpg", pa.array(jpg, pa.binary())), path)
    return out


def read_samples(directory: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(directory.glob("*.jsonl")) for line in f.read_text().splitlines()]


@pytest.mark.parametrize("kill_step", [5, 2], ids=["after-checkpoint", "before-first-checkpoint"])
def test_worker_killed_run_resumes_exactly(clean_data: Path, run_env, tmp_path: Path, kill_step: int):
    samples_dir = tmp_path / "samples"
    env = dict(run_env, CLIPRAY_FAULT=f"step@{kill_step}:rank=1:once={tmp_path / 'killed'}",
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5")
    proc = run_clipray(*tiny_run("data.chunk_files=2", f"train.steps={STEPS}", f"train.global_batch_size={GLOBAL_BATCH}",
                                 f"train.checkpoint_every={CHECKPOINT_EVERY}",  # train.max_failures: the default
                                 f"train.sample_log={samples_dir}", data=clean_data, runs=tmp_path / "runs"),
                       env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (tmp_path / "killed").exists(), "the fault never fired"

    run_id = next(line for line in proc.stdout.splitlines() if line.startswith("mlflow_run_id: ")).split()[-1]
    client = MlflowClient(run_env["MLFLOW_TRACKING_URI"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # the restart did not open a new run
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == list(range(1, STEPS + 1)), steps  # none missing, none twice
    assert client.get_metric_history(run_id, "train/restarts")[-1].value == 1.0
    assert "clipray.restart.1.cause" in run.data.tags

    # Keys: the final attempt's pids are those that trained the last step.
    lines = read_samples(samples_dir)
    final_pids = {ln["pid"] for ln in lines if ln["step"] == STEPS}
    resumed_from = (kill_step // CHECKPOINT_EVERY) * CHECKPOINT_EVERY
    kept = [k for ln in lines
            if (ln["pid"] in final_pids and ln["step"] > resumed_from)
            or (ln["pid"] not in final_pids and ln["step"] <= resumed_from) for k in ln["keys"]]
    replayed = [k for ln in lines if ln["pid"] not in final_pids and ln["step"] > resumed_from for k in ln["keys"]]
    table = pq.read_table(clean_data / "train", columns=["key", "jpg"])
    keys_of: dict[bytes, list[str]] = {}
    for key, jpg in zip(table.column("key").to_pylist(), table.column("jpg").to_pylist(), strict=True):
        keys_of.setdefault(jpg, []).append(key)
    image_of = {k: min(keys) for keys in keys_of.values() for k in keys}  # an image named by its first key
    counts = Counter(kept)
    assert max(counts.values()) == 1 and set(counts) <= set(image_of)
    images = Counter(image_of[k] for k in kept)  # one key of each pair of copies, one of every other image
    assert max(images.values()) == 1, [(image, [k for k in kept if image_of[k] == image])
                                       for image, n in images.items() if n > 1]
    assert set(images) == set(image_of.values()), sorted(set(image_of.values()) - set(images))
    assert len(replayed) <= (kill_step - resumed_from) * GLOBAL_BATCH
    assert min(ln["step"] for ln in lines if ln["pid"] in final_pids) == resumed_from + 1
