"""Two runs of the same pipeline, seed, data and worker layout log the same per-step losses.

Two preprocessing actors and a local shuffle buffer, so the order in which actors finish and
in which blocks reach the workers would show if it leaked into training (docs/determinism.md).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import clipray_cmd
from tests.support.pipelines import tiny_run

pytestmark = pytest.mark.e2e


def _start(tiny_data: Path, env: dict[str, str], cwd: Path, ray_tmp: Path) -> subprocess.Popen[str]:
    cwd.mkdir()
    ray_tmp.mkdir()
    # Each run has its own MLflow store and Ray temp dir: the two run at the same time, each on its
    # own local cluster, so a difference in load between them would show too.
    env = dict(env, MLFLOW_TRACKING_URI=f"sqlite:///{cwd}/mlflow.db", TMPDIR=str(ray_tmp))
    return subprocess.Popen(clipray_cmd(*tiny_run("data.concurrency=2", "data.local_shuffle_buffer=64", "train.steps=5",
                                                  data=tiny_data, runs=cwd / "runs")),
                            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(proc: subprocess.Popen[str], cwd: Path) -> list[tuple[int, float]]:
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-8000:]
    run_id = next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("mlflow_run_id: "))
    client = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))


def test_same_seed_and_layout_give_the_same_losses(tiny_data: Path, run_env, tmp_path: Path, short_tmp: Path):
    runs = [(_start(tiny_data, run_env, tmp_path / name, short_tmp / name[0]), tmp_path / name)
            for name in ("first", "second")]
    first, second = (_losses(proc, cwd) for proc, cwd in runs)
    assert [s for s, _ in first] == list(range(1, 6))
    assert first == second  # bit-identical, not approximately equal
