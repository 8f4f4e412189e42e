"""Pipeline config -> Ray Dataset: read parquet, then one preprocessing stage of chained ops.

    read_parquet (projection, seeded file order)
      -> Preprocess: decode -> clean_caption -> image_transform -> tokenize
      -> {key, image uint8 (N,S,S,3), tokens int32 (N,L)}
"""

from __future__ import annotations

import sys
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from clipray.data.ops.base import Batch, CountingStats, Op, batch_len, op_registry
from clipray.data.sources import read_parquet

if TYPE_CHECKING:
    import ray.data

    from clipray.config import PipelineConfig

TRAIN_OPS = ("decode", "clean_caption", "image_transform", "tokenize")
OUTPUT_COLUMNS = ("key", "image", "tokens")


def build_ops(config: PipelineConfig, *, train: bool, names: tuple[str, ...] = TRAIN_OPS) -> list[Op]:
    return [op_registry.get(name)(config, train=train) for name in names]


class Preprocess:
    """Run a chain of ops over one batch and report rows in/out and drops to the stats actor."""

    def __init__(self, config: PipelineConfig, *, train: bool, stats: Any = None,
                 names: tuple[str, ...] = TRAIN_OPS) -> None:
        self.ops = build_ops(config, train=train, names=names)
        self.stats = stats  # a Ray actor handle, a PipelineStats, or None
        self.key_column = config.data.key_column

    def __call__(self, batch: Batch) -> Batch:
        start = time.perf_counter()
        counts = CountingStats()
        rows_in = batch_len(batch)
        if self.key_column != "key" and self.key_column in batch:
            batch = dict(batch)
            batch["key"] = batch.pop(self.key_column)
        for op in self.ops:
            batch = op(batch, counts)
            if batch_len(batch) == 0:
                break
        out = {name: batch[name] for name in OUTPUT_COLUMNS if name in batch}
        if batch_len(out) == 0:
            out = _empty_output(batch)
        rows_out = batch_len(out)
        self._report(rows_in, rows_out, dict(counts.dropped), time.perf_counter() - start)
        return out

    def _report(self, rows_in: int, rows_out: int, dropped: dict[str, int], busy_s: float) -> None:
        if self.stats is None:
            return
        if hasattr(self.stats, "add") and not hasattr(self.stats.add, "remote"):
            self.stats.add(rows_in, rows_out, dropped, busy_s)
        else:
            import ray

            # Wait for the actor: the counts are then in place before this batch is consumed, so a
            # reader never sees rows that were delivered but not yet counted.
            ray.get(self.stats.add.remote(rows_in, rows_out, dropped, busy_s))


def _empty_output(batch: Batch) -> Batch:
    import numpy as np

    return {"key": np.array([], dtype=object)} if "key" in batch else {}


class SkipKeys:
    """Drop rows whose key is in `keys` (the rows a resumed chunk already consumed)."""

    def __init__(self, keys: Collection[str], key_column: str) -> None:
        self.keys = frozenset(keys)
        self.key_column = key_column

    def __call__(self, batch: Batch) -> Batch:
        import numpy as np

        keep = np.fromiter((k not in self.keys for k in batch[self.key_column]), dtype=bool,
                           count=batch_len(batch))
        return {name: col[keep] for name, col in batch.items()}


def build_dataset(config: PipelineConfig, *, train: bool = True, stats: Any = None, seed: int | None = None,
                  source: str | None = None, files: list[str] | None = None,
                  skip_keys: Collection[str] = ()) -> ray.data.Dataset:
    """The lazy Ray Dataset of preprocessed rows for training (or evaluation when train=False).

    `files`: read exactly these files of the source, in this order, without Ray's file shuffle
    (clipray.data.order plans them). `skip_keys`: rows to leave out before any preprocessing.
    """
    from ray.data import ActorPoolStrategy, DataContext

    ctx = DataContext.get_current()
    if not sys.stderr.isatty():  # per-operator bars are unreadable in logs; keep the overall one
        ctx.enable_operator_progress_bars = False
    d = config.data
    columns = [d.key_column, d.caption_column, d.image_column]
    shuffle_seed = seed if seed is not None else (d.shuffle_seed if d.shuffle_seed is not None else config.train.seed)
    ds = read_parquet(source or d.source, columns=columns, endpoint_url=d.endpoint_url,
                      shuffle_seed=shuffle_seed if train and files is None else None, num_cpus=d.num_cpus,
                      files=files)
    if skip_keys:
        ds = ds.map_batches(SkipKeys(skip_keys, d.key_column), batch_format="numpy", num_cpus=d.num_cpus)
    return ds.map_batches(
        Preprocess,
        fn_constructor_args=(config,),
        fn_constructor_kwargs={"train": train, "stats": stats},
        batch_size=d.batch_size,
        batch_format="numpy",
        zero_copy_batch=True,
        compute=ActorPoolStrategy(min_size=1, max_size=d.concurrency),
        num_cpus=d.num_cpus,
    )
