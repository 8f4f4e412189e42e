"""Model-based filter, the row side: rows whose image-text score is below `data.min_clip_score`
are dropped as `low_clip_score`, and the score is written as the `clip_score` column.

The op receives a factory of the encoder rather than a model: the actor calls it once and then
asks it for the scores of each block. The factory that loads a trained model (a run, a registered
version or a checkpoint) and scores with its own transforms and tokenizer is
clipray.curation.score's; this module needs nothing above the data layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

SCORE_COLUMN = "clip_score"


class ScoreEncoder(Protocol):
    """What the scoring op asks of a model: one score per (image bytes, caption); NaN for an image
    the model cannot read."""

    device: Any

    def scores(self, images: list[Any], captions: list[str]) -> np.ndarray: ...


class ClipScorer:
    """One scoring actor: the encoder built once (`encoder_factory()`), then a score per row."""

    def __init__(self, encoder_factory: Callable[[], ScoreEncoder], min_score: float | None, stats: Any,
                 image_column: str, caption_column: str, keep_all: bool = False) -> None:
        self.encoder = encoder_factory()
        self.min_score = min_score
        self.stats = stats
        self.image_column = image_column
        self.caption_column = caption_column
        self.keep_all = keep_all

    def __call__(self, table: pa.Table) -> pa.Table:
        import pyarrow as pa

        from clipray.data.curate.run import _report

        images = table.column(self.image_column).to_pylist()
        captions = [c if isinstance(c, str) else "" for c in table.column(self.caption_column).to_pylist()]
        scores = np.asarray(self.encoder.scores(images, captions), dtype=np.float32)
        table = table.append_column(SCORE_COLUMN, pa.array(scores, pa.float32()))
        if self.min_score is None or self.keep_all:
            return table
        low = ~(scores >= self.min_score)  # NaN (unreadable for the model) counts as low
        n = int(low.sum())
        if n:
            _report(self.stats, 0, -n, {"low_clip_score": n}, 0.0)
            table = table.filter(pa.array(~low))
        return table
