"""`clipray train` end to end: local Ray cluster, 2 workers, MLflow run read back with MLflow's client."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, run_clipray

pytestmark = pytest.mark.e2e

# A warning- or error-level line: Python logging's level names (Ray's and clipray's loggers, the
# raylet's forwarded "WARNING:" lines), Python warnings, and glog lines of Ray's C++ core
# ("[2026-12-07 22:50:40,783 E 12760 12817] core_worker.cc:...").
ALARMING = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|\w+Warning: |\d\d:\d\d:\d\d,\d{3} [EWF] \d+ \d+\]")


def alarming_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if ALARMING.search(line)]


def test_tiny_pipeline_trains_and_logs_one_mlflow_run(tiny_data: Path, run_env, tmp_path: Path):
    proc = run_clipray("train", str(ROOT / "pipelines/tiny/clip-tiny.yaml"),
                       "--set", f"data.source={tiny_data / 'train'}",
                       "--set", f"eval.zeroshot_source={tiny_data / 'eval'}",
                       "--set", f"train.storage_path={tmp_path / 'runs'}",
                       env=run_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    # A normal run prints nothing at warning or error level (Ray's that do not apply are silenced).
    assert alarming_lines(proc.stdout + proc.stderr) == []
    lines = proc.stdout.strip().splitlines()
    assert lines[-2].startswith("mlflow_run_id: ") and lines[-1].startswith("mlflow_tracking_uri: ")
    assert re.search(r"zero-shot top-1: [0-9.]+ \(24 classes, chance 0\.042\)", proc.stdout)
    run_id = lines[-2].split(": ", 1)[1]
    uri = lines[-1].split(": ", 1)[1]
    assert uri == run_env["MLFLOW_TRACKING_URI"].replace("sqlite:///", "sqlite:///")

    client = MlflowClient(tracking_uri=uri)
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
    assert any((tmp_path / "runs").rglob("state.pt")), "checkpoints go under train.storage_path"


def test_data_profile_json_counts_every_row(tiny_data: Path, run_env, tmp_path: Path):
    proc = run_clipray("data", "profile", str(ROOT / "pipelines/tiny/clip-tiny.yaml"), "--json",
                       "--set", f"data.source={tiny_data / 'train'}", env=run_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout)  # stdout holds the JSON object alone
    assert report["rows_in"] == 384
    assert report["dropped"] == {"decode_error": 2, "empty_caption": 2, "null_image": 2}
    assert report["rows_in"] == report["rows_out"] + sum(report["dropped"].values())
    assert report["rows_per_s"] > 0 and report["stage_rows_per_s"] > 0


def test_unknown_key_fails_before_ray_starts(run_env, tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "pipelines/tiny/clip-tiny.yaml").read_text() + "\nbogus_section: {a: 1}\n")
    proc = run_clipray("train", str(bad), env=run_env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert "unknown key 'bogus_section'" in proc.stderr
    assert "Ray" not in proc.stderr and not (tmp_path / "mlflow.db").exists()
