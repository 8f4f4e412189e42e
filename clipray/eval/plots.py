"""Evaluation pictures of a run: the zero-shot confusion matrix and a retrieval sheet.

Drawn from an `Evaluation` (`clipray.eval.suite.evaluate`), so the evaluation set is decoded and
embedded once for the metrics and the pictures alike; the drawing itself is in
`clipray.tracking.artifacts`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from clipray.config import PipelineConfig
from clipray.eval.suite import Evaluation, text_encoder
from clipray.eval.zeroshot import ZeroShotTask
from clipray.tracking.artifacts import confusion_figure, retrieval_queries, retrieval_sheet


def zero_shot_confusion(evaluation: Evaluation, task: ZeroShotTask) -> np.ndarray:
    """Counts (C, C): rows the true class, columns the predicted one."""
    pred = (evaluation.image_emb @ evaluation.class_weights.T).argmax(-1).cpu().numpy()
    c = len(task.classes)
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (np.asarray(task.labels), pred), 1)
    return confusion


def log_eval_plots(tracker: Any, model: Any, config: PipelineConfig, task: ZeroShotTask,
                   evaluation: Evaluation) -> None:
    """`eval/zeroshot_confusion.png` and `eval/retrieval.png` (top-5 evaluation images per query)."""
    if task.images is None:
        return  # the sheet shows the images; a task embedded elsewhere has none here
    queries = retrieval_queries(task.classes, task.templates)
    query_emb = text_encoder(model, config)([q for q, _ in queries]).cpu().numpy()
    scores = query_emb @ evaluation.image_emb.cpu().numpy().T  # both L2-normalised: cosine similarity
    k = min(5, scores.shape[1])
    top = np.argsort(-scores, axis=1)[:, :k]
    hits = np.asarray(task.labels)[top] == np.array([i for _, i in queries])[:, None]
    with tempfile.TemporaryDirectory() as tmp:
        confusion = zero_shot_confusion(evaluation, task)
        tracker.log_artifact(str(confusion_figure(confusion, task.classes, Path(tmp) / "zeroshot_confusion.png")),
                             "eval")
        tracker.log_artifact(str(retrieval_sheet([q for q, _ in queries], task.images, top, hits,
                                                 Path(tmp) / "retrieval.png")), "eval")
