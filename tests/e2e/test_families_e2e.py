"""Every model family trains 50 steps with `clipray train` (2 CPU workers, local Ray) and its loss
falls; losses and parameter counts are read back from the MLflow run. Plus the text-tower sweep:
variants as MLflow child runs of one parent run."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_clipray
from tests.support.pipelines import PIPELINES, tiny_run

pytestmark = pytest.mark.e2e

STEPS = 50
GLOBAL_BATCH = 32


@pytest.fixture(scope="module")
def one_epoch_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough rows for 50 steps in one epoch: one Ray Data pass instead of five."""
    from clipray.data.synth import write_synthetic

    out = tmp_path_factory.mktemp("fifty")
    write_synthetic(out, STEPS * GLOBAL_BATCH + 64, shards=2, seed=3, image_size=32, eval_per_class=1)
    return out


def _train(pipeline: str, data: Path, run_env: dict[str, str], tmp_path: Path, *extra: str) -> tuple[MlflowClient, str, str]:
    proc = run_clipray(*tiny_run(f"train.steps={STEPS}", f"train.global_batch_size={GLOBAL_BATCH}",
                                 f"train.checkpoint_every={STEPS}", *extra, data=data, runs=tmp_path / "runs",
                                 pipeline=pipeline), env=run_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    lines = proc.stdout.strip().splitlines()
    run_id, uri = lines[-2].split(": ", 1)[1], lines[-1].split(": ", 1)[1]
    return MlflowClient(tracking_uri=uri), run_id, proc.stdout


def _history(client: MlflowClient, run_id: str, name: str) -> list[float]:
    points = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
    assert [m.step for m in points] == list(range(1, STEPS + 1)), name
    return [m.value for m in points]


def _assert_falls(values: list[float], name: str) -> None:
    # Steps 3-10 (after ALBEF's small queue has filled) against the last 8 steps.
    early, late = statistics.mean(values[2:10]), statistics.mean(values[-8:])
    assert late < early, f"{name} did not fall: early {early:.4f}, late {late:.4f}"


@pytest.mark.parametrize("pipeline, family, parts", [
    ("pipelines/tiny/clip-tiny.yaml", "clip", []),
    ("pipelines/tiny/clip-rn-tiny.yaml", "clip", []),
    ("pipelines/tiny/albef-tiny.yaml", "albef", ["itc_loss", "itm_loss", "mlm_loss"]),
    ("pipelines/tiny/clippo-tiny.yaml", "clippo", []),
], ids=["clip-vit", "clip-resnet", "albef", "clippo"])
def test_family_trains_50_steps_and_loss_falls(pipeline, family, parts, one_epoch_data: Path, run_env, tmp_path: Path):
    client, run_id, stdout = _train(pipeline, one_epoch_data, run_env, tmp_path)
    assert f"[clipray] {family} parameters: " in stdout
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert int(run.data.params["model/params/total"]) > 0 and "model/params/vision" in run.data.params
    assert {m.value for m in client.get_metric_history(run_id, "train/world_size")} == {2.0}
    _assert_falls(_history(client, run_id, "train/loss"), "train/loss")
    for part in parts:
        values = _history(client, run_id, f"train/{part}")
        assert all(v == v and v >= 0 for v in values), part  # logged every step, finite
    if parts:
        _assert_falls(_history(client, run_id, "train/mlm_loss"), "train/mlm_loss")


def test_text_tower_sweep_logs_child_runs_under_one_parent(tiny_data: Path, run_env, tmp_path: Path):
    proc = run_clipray(*tiny_run("train.steps=3", command="sweep", pipeline=PIPELINES / "text-tower-ablation.yaml",
                                 data=tiny_data, runs=tmp_path / "runs"), env=run_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    lines = proc.stdout.strip().splitlines()
    parent_id, uri = lines[-2].split(": ", 1)[1], lines[-1].split(": ", 1)[1]
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.variants"] == "causal-eot,bidirectional-first"
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert len(children) == 2
    by_name = {c.info.run_name: c for c in children}
    assert set(by_name) == {"text-tower-tiny/causal-eot", "text-tower-tiny/bidirectional-first"}
    first = by_name["text-tower-tiny/bidirectional-first"]
    assert first.info.status == "FINISHED"
    assert (first.data.params["model.text.attn"], first.data.params["model.text.pool"]) == ("bidirectional", "first")
    for child in children:
        assert len(client.get_metric_history(child.info.run_id, "train/loss")) == 3
    assert "causal-eot/data/rows_out" in parent.data.metrics
