"""Last-mile collation inside Ray Train workers: numpy columns -> torch, keys kept as strings."""

from __future__ import annotations

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn


class TrainCollate(NumpyBatchCollateFn):
    """Tensor columns become (CPU) tensors; `key` stays a list so workers can record what they saw."""

    # Ray annotates CollateFn.__call__ with a TypeVar bound to nothing (CollatedData), which no
    # concrete return type can override.
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, object]:  # type: ignore[override]
        out: dict[str, object] = {}
        for name, col in batch.items():
            if col.dtype.kind in "OUS":
                out[name] = col.tolist()
            else:
                out[name] = torch.from_numpy(np.ascontiguousarray(col))
        return out
