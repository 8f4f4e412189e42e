"""Fault recovery end to end: a training worker is SIGKILLed mid-run and Ray Train restarts it.

Data: 160 clean rows in 4 files, 8 rows of each file a byte-identical copy of another row's image
there (so 128 rows after dedup), 2 files per chunk, global batch 16 on 2 workers, so one epoch is
8 steps = the run. Checkpoints every 3 steps (mid-chunk, so the resumed chunk skips the keys the
checkpoint recorded). Rank 1 is killed twice: before the first checkpoint and after it.
Checked: the run finishes at train.steps in the same MLflow run, every step logged exactly once,
train/restarts = 2 with a cause tag each, and every key of the dataset trained on exactly once,
apart from the keys of steps replayed after each kill, with exactly one key of each pair of
identical images: also when the pair straddles the checkpoint.
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


# Two kills in one run: rank 1 when step 2 ends (before the first checkpoint, so the run starts
# again from step 0) and when step 5 ends (after the checkpoint of step 3, so it resumes there).
KILLS = (2, 5)


def test_worker_killed_run_resumes_exactly(clean_data: Path, run_env, tmp_path: Path):
    samples_dir = tmp_path / "samples"
    faults = ",".join(f"step@{step}:rank=1:once={tmp_path / f'killed-{step}'}" for step in KILLS)
    env = dict(run_env, CLIPRAY_FAULT=faults, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5")
    proc = run_clipray(*tiny_run("data.chunk_files=2", f"train.steps={STEPS}", f"train.global_batch_size={GLOBAL_BATCH}",
                                 f"train.checkpoint_every={CHECKPOINT_EVERY}",  # train.max_failures: the default
                                 f"train.sample_log={samples_dir}", data=clean_data, runs=tmp_path / "runs"),
                       env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert all((tmp_path / f"killed-{step}").exists() for step in KILLS), "a fault never fired"

    run_id = next(line for line in proc.stdout.splitlines() if line.startswith("mlflow_run_id: ")).split()[-1]
    client = MlflowClient(run_env["MLFLOW_TRACKING_URI"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # the restarts did not open a new run
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == list(range(1, STEPS + 1)), steps  # none missing, none twice
    assert client.get_metric_history(run_id, "train/restarts")[-1].value == len(KILLS)
    assert {"clipray.restart.1.cause", "clipray.restart.2.cause"} <= set(run.data.tags)

    # The samples that count: per step, the two workers of the attempt that got past it (its last
    # writers); every other sample was trained on by an attempt that was killed and is replayed.
    lines = read_samples(samples_dir)
    final = []
    for step in range(1, STEPS + 1):
        writers = sorted((ln for ln in lines if ln["step"] == step), key=lambda ln: ln["time"])[-2:]
        assert sorted(ln["rank"] for ln in writers) == [0, 1], (step, writers)
        final += writers
    kept = [k for ln in final for k in ln["keys"]]
    replayed = [k for ln in lines if ln not in final for k in ln["keys"]]
    # Each attempt resumes at the last checkpoint before its kill: step 0, then step 3.
    resumed = [(kill // CHECKPOINT_EVERY) * CHECKPOINT_EVERY for kill in KILLS]
    assert resumed == [0, 3]
    final_pids = {ln["pid"] for ln in lines if ln["step"] == STEPS}
    assert min(ln["step"] for ln in lines if ln["pid"] in final_pids) == resumed[-1] + 1
    assert {ln["pid"] for ln in final if ln["step"] <= resumed[-1]}.isdisjoint(final_pids)
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
    assert len(replayed) <= sum(kill - start for kill, start in zip(KILLS, resumed, strict=True)) * GLOBAL_BATCH
