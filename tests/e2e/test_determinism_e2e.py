"""Two runs of the same pipeline, seed, data and worker layout log the same per-step losses.

Two preprocessing actors and a local shuffle buffer, so the order in which actors finish and
in which blocks reach the workers would show if it leaked into training (docs/determinism.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, run_clipray

pytestmark = pytest.mark.e2e


def _train(tiny_data: Path, env: dict[str, str], cwd: Path) -> tuple[str, str]:
    proc = run_clipray("train", str(ROOT / "pipelines/tiny/clip-tiny.yaml"),
                       "--set", f"data.source={tiny_data / 'train'}", "--set", "eval.zeroshot_source=null",
                       "--set", "data.concurrency=2", "--set", "data.local_shuffle_buffer=64",
                       "--set", "train.steps=5", "--set", "tracking.log_model=false",
                       "--set", f"train.storage_path={cwd / 'runs'}", env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout.strip().splitlines()[-2].split(": ", 1)[1], proc.stdout + proc.stderr


def test_same_seed_and_layout_give_the_same_losses(tiny_data: Path, run_env, tmp_path: Path):
    first, _ = _train(tiny_data, run_env, tmp_path)
    second, _ = _train(tiny_data, run_env, tmp_path)
    client = MlflowClient(run_env["MLFLOW_TRACKING_URI"])

    def losses(run_id: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))

    assert first != second
    assert [s for s, _ in losses(first)] == list(range(1, 6))
    assert losses(first) == losses(second)  # bit-identical, not approximately equal
