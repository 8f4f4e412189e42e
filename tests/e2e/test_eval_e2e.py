"""Real images end to end: scikit-learn digits -> `clipray train` -> `clipray eval` / `clipray embed`.

Captions are built from the digit labels; zero-shot is measured on held-out digits the model never
saw, through the Ray Data embedding stage, and logged into the training run in MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_clipray
from tests.support.pipelines import PIPELINES, tiny_run

pytestmark = pytest.mark.e2e


def _field(stdout: str, prefix: str) -> str:
    return next(line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith(prefix))


def test_digits_train_then_eval_zero_shot_well_above_chance(run_env, tmp_path: Path):
    proc = run_clipray("realdata", "--set", "digits", "--out", str(tmp_path / "digits"), env=run_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_clipray(*tiny_run(pipeline=PIPELINES / "clip-digits.yaml", data=tmp_path / "digits", runs=tmp_path / "runs",
                                 zeroshot=tmp_path / "digits/eval", log_model=True), env=run_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    run_id = _field(proc.stdout, "mlflow_run_id")
    uri = _field(proc.stdout, "mlflow_tracking_uri")
    client = MlflowClient(tracking_uri=uri)
    checkpoint = client.get_run(run_id).data.tags["clipray.checkpoint"]
    assert (Path(checkpoint) / "state.pt").exists()
    # Periodic evaluation (eval.every_steps: 60) logged the same metrics during training; the
    # end-of-run evaluation logs them at the last step too.
    assert sorted({m.step for m in client.get_metric_history(run_id, "eval/t2i_r1")}) == [60, 120]

    proc = run_clipray("eval", "--model", run_id, "--data", str(tmp_path / "digits/eval"), "--json",
                       env=run_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for label in ["zero-shot top-1", "image->text R@1", "image->text R@10", "text->image R@5", "modality gap"]:
        assert f"| {label} |" in proc.stdout, label
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["eval/images"] == 450 and metrics["eval/zeroshot_classes"] == 10
    assert metrics["eval/zeroshot_top1"] >= 0.3, metrics  # chance is 0.1
    assert metrics["eval/t2i_r1"] >= 0.3 and 0 < metrics["eval/modality_gap"] < 2

    logged = client.get_run(run_id).data.metrics
    assert logged["eval/digits/zeroshot_top1"] == pytest.approx(metrics["eval/zeroshot_top1"])
    assert "eval/digits/i2t_r10" in logged and "eval/digits/modality_gap" in logged
    assert "eval/digits.json" in {a.path for a in client.list_artifacts(run_id, "eval")}

    # The checkpoint directory works as --model too; text embeddings written back to parquet.
    proc = run_clipray("embed", "--model", checkpoint, "--data", str(tmp_path / "digits/eval"),
                       "--out", str(tmp_path / "emb"), "--modality", "text", "--keep", "key,label",
                       env=run_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    table = pq.read_table(tmp_path / "emb")
    assert table.num_rows == 450 and set(table.column_names) == {"key", "label", "embedding"}
    assert table.column("embedding").type.list_size == 32
