"""`clipray submit` against a real `ray start --head` cluster with token authentication on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_clipray
from tests.support.rayhead import RayHead, ray_head

pytestmark = pytest.mark.e2e
TINY = str(ROOT / "pipelines/tiny/clip-tiny.yaml")


@pytest.fixture(scope="module")
def auth_head() -> Iterator[RayHead]:
    with ray_head(auth=True, num_cpus=2) as head:
        yield head


def _env(head: RayHead, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = head.client_env()
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token of the user's
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def test_submit_wait_runs_tiny_pipeline_to_success(auth_head: RayHead, tiny_data: Path, tmp_path: Path):
    env = _env(auth_head, tmp_path)
    env.pop("RAY_AUTH_MODE")  # the token alone is enough, as with `ray job submit`
    # A vocabulary of `clipray tokenizer train`, given by a path relative to the submitting side.
    proc = run_clipray("tokenizer", "train", "--source", str(tiny_data / "train"), "--out", "vocab.json",
                       "--vocab-size", "600", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_clipray("submit", TINY, "--address", auth_head.address, "--wait",
                       "--set", f"data.source={tiny_data / 'train'}",
                       "--set", f"eval.zeroshot_source={tiny_data / 'eval'}",
                       "--set", "text_encoding.tokenizer=vocab.json",
                       "--set", "train.storage_path=runs", env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = proc.stdout.splitlines()[0]
    assert job_id.startswith("clipray-clip-tiny-")
    assert "[clipray] step 6/6" in proc.stdout and "zero-shot top-1" in proc.stdout
    assert any((tmp_path / "runs").rglob("state.pt")), "relative storage_path resolved on the submitting side"
    state = torch.load(next((tmp_path / "runs").rglob("state.pt")), map_location="cpu", weights_only=False)
    assert state["config"]["text_encoding"]["tokenizer"] == str(tmp_path / "vocab.json"), "and the relative tokenizer path"
    listed = run_clipray("jobs", "list", "--address", auth_head.address, env=env, cwd=tmp_path)
    assert job_id in listed.stdout and "SUCCEEDED" in listed.stdout, listed.stdout + listed.stderr
    status = run_clipray("jobs", "status", job_id, "--address", auth_head.address, env=env, cwd=tmp_path)
    assert status.stdout.startswith(f"{job_id}: SUCCEEDED"), status.stdout + status.stderr


def test_failing_pipeline_exits_nonzero_with_job_error(auth_head: RayHead, tmp_path: Path):
    proc = run_clipray("submit", TINY, "--address", auth_head.address, "--wait",
                       "--set", f"data.source={tmp_path / 'no-such-dir'}", "--set", "train.storage_path=runs",
                       env=_env(auth_head, tmp_path), cwd=tmp_path, timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "failed: Job entrypoint command failed" in proc.stderr
    assert "no-such-dir' does not exist" in proc.stderr  # the job's own error, not just a status


def test_wrong_or_missing_token_is_refused_clearly(auth_head: RayHead, tmp_path: Path):
    wrong = _env(auth_head, tmp_path, RAY_AUTH_TOKEN="0" * 32)
    proc = run_clipray("submit", TINY, "--address", auth_head.address, env=wrong, cwd=tmp_path)
    assert proc.returncode == 2
    assert "refused the authentication token from RAY_AUTH_TOKEN" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr

    missing = _env(auth_head, tmp_path)
    missing.pop("RAY_AUTH_TOKEN")
    missing.pop("RAY_AUTH_MODE")
    proc = run_clipray("jobs", "list", "--address", auth_head.address, env=missing, cwd=tmp_path)
    assert proc.returncode == 2
    assert "requires an authentication token and none was found" in proc.stderr, proc.stderr

    for command in ("status", "logs", "stop"):  # an unknown job id, with the right token
        proc = run_clipray("jobs", command, "no-such-job", "--address", auth_head.address,
                           env=_env(auth_head, tmp_path), cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "Job no-such-job does not exist" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_driver_outside_the_cluster_authenticates_with_the_token(auth_head: RayHead, tiny_data: Path, tmp_path: Path):
    """`clipray train` / `data profile` on the cluster in RAY_ADDRESS: RAY_AUTH_TOKEN alone turns on
    token mode, as for `clipray submit`; a wrong token is refused in one line."""
    env = _env(auth_head, tmp_path, RAY_ADDRESS=auth_head.gcs_address,
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")  # the driver's node on loopback, as the head's
    env.pop("RAY_AUTH_MODE")
    args = ("data", "profile", TINY, "--json", "--set", f"data.source={tiny_data / 'train'}")
    proc = run_clipray(*args, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert json.loads(proc.stdout)["rows_in"] == 384

    proc = run_clipray(*args, env={**env, "RAY_AUTH_TOKEN": "0" * 32}, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-5000:]
    assert "refused the authentication token from RAY_AUTH_TOKEN" in proc.stderr
    assert "Traceback" not in proc.stderr
