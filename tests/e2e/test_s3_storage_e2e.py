"""The object-storage run the README describes: training data read from S3 and checkpoints written
to S3 (`train.storage_path=s3://...`), against a real SeaweedFS server. The checkpoints land
committed in the bucket, and the last one loads back through clipray's checkpoint store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT, run_clipray

pytestmark = pytest.mark.e2e
BUCKET = "clipray-s3-storage"


def test_train_reads_and_checkpoints_on_s3(s3_server, tiny_data: Path, run_env: dict[str, str], tmp_path: Path,
                                           monkeypatch):
    from clipray.train.checkpoint import CheckpointStore

    s3_server.create_bucket(BUCKET)
    s3_server.upload_dir(tiny_data / "train", BUCKET, "data/train")
    env = {**run_env, **s3_server.env()}
    proc = run_clipray("train", str(ROOT / "pipelines/tiny/clip-tiny.yaml"),
                       "--set", f"data.source=s3://{BUCKET}/data/train",
                       "--set", f"eval.zeroshot_source={tiny_data / 'eval'}",
                       "--set", f"train.storage_path=s3://{BUCKET}/runs",
                       env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    keys = [o["Key"] for page in s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]
    committed = sorted(k for k in keys if k.startswith("runs/") and k.endswith("/COMMITTED"))
    # clip-tiny: 6 steps, a checkpoint every 3, the last two kept.
    assert [k.rsplit("/", 2)[-2] for k in committed] == ["step_00000003", "step_00000006"], keys
    assert not (Path(tmp_path) / "clipray_runs").exists(), "nothing written to the local default"

    for name, value in s3_server.env().items():  # the store reads S3 as the workers did
        monkeypatch.setenv(name, value)
    root = "s3://" + BUCKET + "/" + committed[-1].rsplit("/", 2)[0]
    state = CheckpointStore(root).load()
    assert state is not None and state["step"] == 6
    assert state["data"]["epoch"] >= 0 and state["data"]["consumed"], "the cursor travels with the checkpoint"
