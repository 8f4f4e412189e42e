"""The op seam: a callable over a dict-of-columns batch that counts what it drops."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from clipray.registry import Registry

Batch = dict[str, Any]  # column name -> numpy array or list, all of one length


class DropStats(Protocol):
    def drop(self, reason: str, n: int) -> None: ...


class Op(Protocol):
    """reads/writes name the columns; __call__ returns the (possibly shorter) batch."""

    # Read-only: an op's `reads = ("image",)` is a tuple[str], which a settable
    # tuple[str, ...] member would not accept.
    @property
    def reads(self) -> tuple[str, ...]: ...

    @property
    def writes(self) -> tuple[str, ...]: ...

    def __call__(self, batch: Batch, stats: DropStats) -> Batch: ...


# name -> factory(config: PipelineConfig, *, train: bool) -> Op
op_registry: Registry[Callable[..., Op]] = Registry(
    "data op",
    lazy_modules=["clipray.data.ops.decode", "clipray.data.ops.text", "clipray.data.ops.transforms",
                  "clipray.data.ops.filters", "clipray.data.ops.curation"],
)


def batch_len(batch: Batch) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def keep_rows(batch: Batch, mask: np.ndarray) -> Batch:
    """Rows where mask is True, in every column (numpy arrays and lists alike)."""
    if mask.all():
        return batch
    idx = np.flatnonzero(mask)
    out: Batch = {}
    for name, col in batch.items():
        out[name] = col[idx] if isinstance(col, np.ndarray) else [col[i] for i in idx]
    return out


def drop_where(batch: Batch, bad: np.ndarray, reason: str, stats: DropStats) -> Batch:
    n = int(bad.sum())
    if n:
        stats.drop(reason, n)
        batch = keep_rows(batch, ~bad)
    return batch


class CountingStats:
    """Drop counts of one batch, shipped to the pipeline's stats actor afterwards."""

    def __init__(self) -> None:
        self.dropped: Counter[str] = Counter()

    def drop(self, reason: str, n: int) -> None:
        self.dropped[reason] += n
