"""The tiny pipeline trained once with `clipray train` (local Ray, 2 workers) and its record read
back from a real `mlflow server` (SQLite) with artifacts in SeaweedFS: metrics, drops and config;
the logged pyfunc model embeds like the in-process model; planted secrets appear in no
param, tag or artifact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, run_clipray
from tests.support.mlflowserver import mlflow_server
from tests.support.pipelines import tiny_run

pytestmark = pytest.mark.e2e
ENV_SECRET = "tok-planted-env-3b9f27c1"  # as RAY_AUTH_TOKEN in the run's environment
CFG_SECRET = "cfg-planted-pw-77ae01"  # inside a config value (a URI with credentials)


@pytest.fixture(scope="module")
def tracking(s3_server, tmp_path_factory) -> Iterator[str]:
    bucket = s3_server.create_bucket("mlflow-artifacts")
    with mlflow_server(tmp_path_factory.mktemp("mlflow"), artifacts=f"s3://{bucket}/", env=s3_server.env()) as url:
        yield url


@pytest.fixture(scope="module")
def trained(tracking: str, tiny_data: Path, tmp_path_factory) -> dict[str, str]:
    import os
    import shutil
    import tempfile

    cwd = tmp_path_factory.mktemp("run")
    short = Path(tempfile.mkdtemp(prefix="cr-", dir="/tmp"))
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking, TMPDIR=str(short), RAY_AUTH_MODE="disabled",
               PYTHONUNBUFFERED="1", RAY_AUTH_TOKEN=ENV_SECRET)
    env.pop("RAY_ADDRESS", None)
    try:
        # The tiny pipeline as a user runs it: zero-shot evaluation on, the model logged.
        proc = run_clipray(*tiny_run(f"data.endpoint_url=http://admin:{CFG_SECRET}@127.0.0.1:1",
                                     f"tracking.run_name=nightly-{ENV_SECRET}", data=tiny_data, runs=cwd / "runs",
                                     zeroshot=tiny_data / "eval", log_model=True),
                           env=env, cwd=cwd, timeout=600)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if line.startswith("mlflow_"))
    return {"run_id": lines["mlflow_run_id"], "uri": tracking, "cwd": str(cwd), "stdout": proc.stdout, "stderr": proc.stderr}


def test_tiny_pipeline_trains_and_logs_one_mlflow_run(trained: dict[str, str], tiny_data: Path, tmp_path: Path):
    """`clipray train` end to end: local Ray cluster, 2 workers, the MLflow run read back with MLflow's client."""
    import re

    import yaml
    from mlflow.tracking import MlflowClient

    from tests.e2e.test_train_e2e import alarming_lines

    # A normal run prints nothing at warning or error level (Ray's that do not apply are silenced).
    assert alarming_lines(trained["stdout"] + trained["stderr"]) == []
    lines = trained["stdout"].strip().splitlines()
    assert lines[-2].startswith("mlflow_run_id: ") and lines[-1] == f"mlflow_tracking_uri: {trained['uri']}"
    assert re.search(r"zero-shot top-1: [0-9.]+ \(24 classes, chance 0\.042\)", trained["stdout"])
    run_id = trained["run_id"]
    client = MlflowClient(tracking_uri=trained["uri"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "clip-tiny"
    params = run.data.params
    assert params["train.steps"] == "6" and params["model.family"] == "clip"
    assert params["data.source"] == str(tiny_data / "train")
    for name in ["train/loss", "train/lr", "train/logit_scale", "train/samples_per_s", "train/world_size"]:
        history = client.get_metric_history(run_id, name)
        assert sorted(m.step for m in history) == list(range(1, 7)), name
    assert {m.value for m in client.get_metric_history(run_id, "train/world_size")} == {2.0}
    metrics = run.data.metrics
    assert 0.0 <= metrics["eval/zeroshot_top1"] <= 1.0
    # The shards hold 6 rows broken on purpose: 2 truncated JPEGs, 2 empty captions, 2 null images.
    assert metrics["data/dropped/decode_error"] == 2
    assert metrics["data/dropped/empty_caption"] == 2
    assert metrics["data/dropped/null_image"] == 2
    assert metrics["data/rows_per_s"] > 0 and metrics["data/stage_rows_per_s"] > 0
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert "config.yaml" in artifacts
    logged = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path))).read_text())
    assert logged["train"]["steps"] == 6 and logged["model"]["family"] == "clip"
    assert any((Path(trained["cwd"]) / "runs").rglob("state.pt")), "checkpoints go under train.storage_path"


def test_pyfunc_model_embeds_like_in_process_model(trained: dict[str, str], tiny_data: Path):
    import mlflow
    import pandas as pd
    import pyarrow.parquet as pq
    import torch
    import torch.nn.functional as F
    from mlflow.tracking import MlflowClient

    from clipray.config import load_config
    from clipray.eval.zeroshot import load_zeroshot_task
    from clipray.models import build_model
    from clipray.models.checkpoint import read_state
    from clipray.models.inputs import embed_images
    from clipray.text import load_tokenizer

    client = MlflowClient(trained["uri"])
    versions = client.search_model_versions("name='clip-tiny'")
    mine = [v for v in versions if v.run_id == trained["run_id"]]
    assert len(mine) == 1, "the run's model is registered once"
    mlflow.set_tracking_uri(trained["uri"])
    loaded = mlflow.pyfunc.load_model(f"models:/clip-tiny/{mine[0].version}")
    sig = loaded.metadata.signature
    assert sig is not None and {c.name for c in sig.inputs.inputs} == {"image", "text"}

    config = load_config(ROOT / "pipelines/tiny/clip-tiny.yaml",
                         [f"eval.zeroshot_source={tiny_data / 'eval'}"])
    state_files = sorted(Path(trained["cwd"], "runs").rglob("state.pt"), key=lambda p: p.stat().st_mtime)
    model = build_model(config.model)
    model.load_state_dict(read_state(str(state_files[-1].parent))["objective"]["model"])
    model.eval()

    eval_file = sorted((tiny_data / "eval").glob("*.parquet"))[0]
    table = pq.read_table(eval_file, columns=["jpg"]).slice(0, 6)
    images = table.column("jpg").to_pylist()
    texts = ["a photo of a red circle", "a blue square", "green triangle on white"]
    frame = pd.DataFrame({"image": images + [None] * 3, "text": [None] * 6 + texts})
    got = np.asarray(loaded.predict(frame))

    task = load_zeroshot_task(config)  # the evaluation path: same decode/transform, separate code
    want_img = embed_images(model, task.images[:6], config).numpy()
    tok = load_tokenizer(config.text_encoding.tokenizer, config.model.text.context_length)
    with torch.no_grad():
        want_txt = F.normalize(model.encode_text(torch.from_numpy(tok(texts)).long()).float(), dim=-1).numpy()
    assert got.shape == (9, config.model.embed_dim)
    np.testing.assert_allclose(got[:6], want_img, atol=1e-5)
    np.testing.assert_allclose(got[6:], want_txt, atol=1e-5)


def _all_artifacts(client, run_id: str, dest: Path) -> list[Path]:
    local = Path(client.download_artifacts(run_id, "", str(dest)))
    return [p for p in local.rglob("*") if p.is_file()]


def test_no_planted_secret_is_logged(trained: dict[str, str], tmp_path: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(trained["uri"])
    run = client.get_run(trained["run_id"])
    texts = [f"{k}={v}" for k, v in run.data.params.items()] + [f"{k}={v}" for k, v in run.data.tags.items()]
    texts += [run.info.run_name or ""]
    versions = client.search_model_versions("name='clip-tiny'")
    texts += [f"{k}={v}" for v in versions for k, v in v.tags.items()]
    blob = "\n".join(texts)
    assert run.data.params["data.endpoint_url"] == "http://admin:***@127.0.0.1:1"  # masked, not dropped
    files = _all_artifacts(client, trained["run_id"], tmp_path)
    names = {f.name for f in files}
    assert {"config.yaml", "sample_batch.png", "zeroshot_confusion.png"} <= names, names
    # The logged model's own files (a separate artifact root in MLflow 3).
    import mlflow

    mlflow.set_tracking_uri(trained["uri"])
    v = next(v for v in versions if v.run_id == trained["run_id"])
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/clip-tiny/{v.version}",
                                                         dst_path=str(tmp_path / "m")))
    files += [p for p in model_dir.rglob("*") if p.is_file()]
    assert any(f.name == "state.pt" for f in files) and any(f.name == "MLmodel" for f in files)  # config inside
    for secret in (ENV_SECRET, CFG_SECRET):
        assert secret not in blob, f"{secret} in params/tags"
        for f in files:
            assert secret.encode() not in f.read_bytes(), f"{secret} in artifact {f}"
    assert any(k.startswith("system/") for k in run.data.metrics), "MLflow system metrics logged"
