"""The object-storage run the README describes: training data read from S3 and checkpoints written
to S3 (`train.storage_path=s3://...`), against a real SeaweedFS server. The checkpoints land
committed in the bucket, the last one loads back through clipray's checkpoint store, and
`clipray eval --model RUN_ID` finds it from the run's `clipray.checkpoint` tag. The run starts
from weights on S3 (`model.init_from: s3://...`), read by the Ray Train workers. The run also uses a
vocabulary from `clipray tokenizer train`, given by a relative path: it travels with the run as an
artifact, and the evaluation, started from another directory, still finds it."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from clipray.config import load_config
from clipray.models import build_model
from tests.conftest import ROOT, run_clipray

pytestmark = pytest.mark.e2e
BUCKET = "clipray-s3-storage"


def test_train_reads_and_checkpoints_on_s3(s3_server, tiny_data: Path, run_env: dict[str, str], tmp_path: Path,
                                           monkeypatch):
    from clipray.train.checkpoint import CheckpointStore

    s3_server.create_bucket(BUCKET)
    s3_server.upload_dir(tiny_data / "train", BUCKET, "data/train")
    init = build_model(load_config(ROOT / "pipelines/tiny/clip-tiny.yaml").model)
    with torch.no_grad():
        init.logit_scale.fill_(math.log(50.0))  # a mark the run's first logged step shows (default 14.3)
    buffer = io.BytesIO()
    torch.save(init.state_dict(), buffer)
    s3_server.client().put_object(Bucket=BUCKET, Key="init/clip-tiny.pt", Body=buffer.getvalue())
    env = {**run_env, **s3_server.env()}
    proc = run_clipray("tokenizer", "train", "--source", str(tiny_data / "train"), "--out", "vocab.json",
                       "--vocab-size", "600", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_clipray("train", str(ROOT / "pipelines/tiny/clip-tiny.yaml"),
                       "--set", f"data.source=s3://{BUCKET}/data/train",
                       "--set", f"eval.zeroshot_source={tiny_data / 'eval'}",
                       "--set", f"train.storage_path=s3://{BUCKET}/runs",
                       "--set", "text_encoding.tokenizer=vocab.json",
                       "--set", f"model.init_from=s3://{BUCKET}/init/clip-tiny.pt",
                       env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    run_id = next(line for line in proc.stdout.splitlines() if line.startswith("mlflow_run_id: ")).split()[-1]

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

    client = MlflowClient(run_env["MLFLOW_TRACKING_URI"])
    run = client.get_run(run_id)
    assert run.data.tags["clipray.checkpoint"] == f"{root}/step_00000006"  # a URI, not a bucket-relative path
    assert [a.path for a in client.list_artifacts(run_id, "tokenizer")] == ["tokenizer/vocab.json"]
    first = min(client.get_metric_history(run_id, "train/logit_scale"), key=lambda m: m.step)
    assert first.step == 1 and first.value == pytest.approx(50.0, rel=0.02), "model.init_from was loaded"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_clipray("eval", "--model", run_id, "--data", str(tiny_data / "eval"), "--name", "heldout", "--json",
                       env=env, cwd=elsewhere, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["eval/images"] == 48 and metrics["eval/zeroshot_classes"] == 24
    assert client.get_run(run_id).data.metrics["eval/heldout/zeroshot_top1"] == pytest.approx(metrics["eval/zeroshot_top1"])
