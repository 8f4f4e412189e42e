"""Evaluation every `eval.every_steps` optimizer steps, inside the training process on rank 0.

The one evaluation (`clipray.eval.suite.evaluate`), as `clipray eval` and the end of training run
it; the images are embedded in-process because the model is already here. The evaluation set is decoded once, on first use.
Other ranks do not wait for it explicitly: they block in the next step's collective until rank 0
has finished, which is the same pause a barrier would give.
"""

from __future__ import annotations

from typing import Any

import torch

from clipray.config import PipelineConfig
from clipray.eval.zeroshot import ZeroShotTask


class PeriodicEval:
    def __init__(self, config: PipelineConfig, rank: int) -> None:
        self.config = config
        self.every = config.eval.every_steps or 0
        self.enabled = bool(self.every and rank == 0 and config.eval.zeroshot_source)
        self._task: ZeroShotTask | None = None

    def due(self, step: int) -> bool:
        return self.enabled and step % self.every == 0

    def __call__(self, model: Any, device: torch.device) -> dict[str, float]:
        from clipray.eval.suite import evaluate
        from clipray.eval.zeroshot import load_zeroshot_task

        if not hasattr(model, "encode_image") or not hasattr(model, "encode_text"):
            return {}  # a family without a dual encoder has no zero-shot/retrieval metrics
        if self._task is None:
            self._task = load_zeroshot_task(self.config)
        with torch.autocast(device.type, enabled=False):
            return evaluate(model, self.config, self._task, device).metrics
