"""`--resume RUN_ID` checks against a real MLflow store: the pipeline must match the run's recorded
config except the keys that may change across a resume; `clipray submit --resume` refuses before
submitting and otherwise hands the run id to the job's entrypoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipray.config import load_config
from clipray.jobs.submit import prepare_job
from clipray.tracking import start_run
from clipray.train.launcher import log_config
from clipray.train.resume import ResumeError, resume_point
from tests.conftest import ROOT

TINY = str(ROOT / "pipelines/tiny/clip-tiny.yaml")


def _recorded_run(tmp_path: Path, overrides: list[str]) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = start_run("clip-tiny", uri)
    log_config(tracker, load_config(TINY, overrides))
    tracker.set_tags({"clipray.checkpoints": f"{tmp_path}/runs/clip-tiny-{tracker.run_id[:8]}/checkpoints"})
    return uri, tracker.run_id


def test_resume_point_and_refused_differences(tmp_path: Path):
    base = [f"train.storage_path={tmp_path / 'runs'}"]
    uri, run_id = _recorded_run(tmp_path, base)
    # Worker count and address may change; the storage path is taken from the run's tag.
    point = resume_point(load_config(TINY, [*base, "train.num_workers=1", "ray.address=auto"]), uri, run_id)
    assert point.storage == f"{tmp_path}/runs" and point.name == f"clip-tiny-{run_id[:8]}" and point.restarts == 0
    with pytest.raises(ResumeError, match=r"optim\.lr \('0\.001' -> 0\.5\).*train\.steps \('6' -> 9\)"):
        resume_point(load_config(TINY, [*base, "optim.lr=0.5", "train.steps=9"]), uri, run_id)
    with pytest.raises(ResumeError, match="no such MLflow run"):
        resume_point(load_config(TINY, base), uri, "0" * 32)


def test_submit_resume_checks_then_passes_the_run_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    uri, run_id = _recorded_run(tmp_path, [f"tracking.tracking_uri={tmp_path / 'mlflow.db'}"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    job = prepare_job(TINY, [], resume=run_id)
    assert job.entrypoint.endswith(f" -m clipray train pipeline.yaml --resume {run_id}")
    with pytest.raises(ResumeError, match=r"model\.embed_dim"):
        prepare_job(TINY, ["model.embed_dim=64"], resume=run_id)
