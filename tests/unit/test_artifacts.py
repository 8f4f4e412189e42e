"""Pictures a run logs: retrieval sheet, loss/learning-rate curves (Pillow only)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipray.config import load_config
from clipray.models import build_model
from clipray.tracking.artifacts import (
    line_chart,
    log_training_curves,
    retrieval_queries,
    retrieval_sheet,
)
from tests.conftest import ROOT


class FileTracker:
    """Keeps a copy of every logged artifact under `root/<artifact_path>/`."""

    run_id = "r"

    def __init__(self, root: Path) -> None:
        self.root = root

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        dest = self.root / (artifact_path or "")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)


def test_retrieval_queries_spread_over_the_classes():
    classes = [f"c{i}" for i in range(24)]
    queries = retrieval_queries(classes, ["a photo of a {}.", "a {}."], n=6)
    assert [i for _, i in queries] == [0, 5, 9, 14, 18, 23]
    assert queries[0][0] == "a photo of a c0."
    assert [i for _, i in retrieval_queries(classes[:2], ["{}"], n=6)] == [0, 1]


def test_retrieval_sheet_frames_hits_green_and_misses_red(tmp_path):
    images = np.zeros((4, 8, 8, 3), np.uint8)
    top = np.array([[0, 1, 2], [3, 2, 1]])
    hits = np.array([[True, False, True], [False, False, True]])
    path = retrieval_sheet(["red circle", "blue square"], images, top, hits, tmp_path / "r.png", tile=20)
    img = Image.open(path).convert("RGB")
    label_w, pad = 170, 4
    assert img.size == (label_w + 3 * 24 + pad, pad + 2 * 24 + 18)

    def frame(row: int, col: int) -> tuple[int, ...]:  # the pixel just above a tile's top-left corner
        return img.getpixel((label_w + pad + col * 24, 18 + pad + row * 24 - 1))

    assert frame(0, 0) == (40, 160, 60) and frame(0, 1) == (200, 40, 40) and frame(1, 2) == (40, 160, 60)


def test_line_chart_has_one_panel_per_series(tmp_path):
    series = {"train/loss": [(s, 5.0 - s / 10) for s in range(1, 31)], "train/lr": [(s, 1e-3) for s in range(1, 31)],
              "empty": []}
    img = Image.open(line_chart(series, tmp_path / "c.png", width=300, panel_h=100))
    assert img.size == (300, 2 * (100 + 26) + 10)
    pixels = np.asarray(img.convert("RGB"))
    assert ((pixels == (30, 70, 200)).all(-1)).sum() > 100  # the curves are drawn


def test_eval_plots_and_curves_are_logged(tiny_data, tmp_path):
    config = load_config(ROOT / "pipelines/tiny/clip-tiny.yaml",
                         [f"data.source={tiny_data / 'train'}", f"eval.zeroshot_source={tiny_data / 'eval'}"])
    torch.manual_seed(0)
    model = build_model(config.model).eval()
    tracker = FileTracker(tmp_path / "artifacts")
    from clipray.eval.plots import log_eval_plots, zero_shot_confusion
    from clipray.eval.suite import evaluate
    from clipray.eval.zeroshot import load_zeroshot_task

    task = load_zeroshot_task(config)
    evaluation = evaluate(model, config, task)
    log_eval_plots(tracker, model, config, task, evaluation)
    confusion = zero_shot_confusion(evaluation, task)  # the matrix agrees with the logged top-1
    assert confusion.sum() == len(task.labels)
    assert confusion.trace() / confusion.sum() == pytest.approx(evaluation.metrics["eval/zeroshot_top1"])
    sheet = Image.open(tmp_path / "artifacts/eval/retrieval.png")
    assert sheet.size[1] > 6 * 72  # six query rows
    assert Image.open(tmp_path / "artifacts/eval/zeroshot_confusion.png").size[0] > 24 * 14

    import mlflow.tracking

    from clipray.tracking import MlflowTracker, start_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = start_run("curves", uri)
    run.log_metrics({"train/loss": 4.0, "train/lr": 1e-4}, step=1)
    run.log_metrics({"train/loss": 3.0, "train/lr": 1e-3}, step=2)
    log_training_curves(MlflowTracker(uri, run.run_id))
    client = mlflow.tracking.MlflowClient(uri)
    assert [a.path for a in client.list_artifacts(run.run_id, "curves")] == ["curves/training.png"]
