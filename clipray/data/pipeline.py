"""Pipeline config -> Ray Dataset: read parquet, then one preprocessing stage of chained ops.

    resolve source (list files, check S3 reachability/credentials and schemas before Ray Data)
      -> read_parquet (projection, hive partition columns, seeded file order)
      -> Preprocess: data.ops, by default dedup_images -> decode -> image_filter -> clean_caption
                     -> caption_filter -> image_transform -> encode_text (tokenize | render_text)
      -> {key, image uint8 (N,S,S,3), tokens int32 (N,L) | text_image uint8 (N,S,S,3)}
         (+ data.partition_columns)

`encode_text` is the text stage `text_encoding.kind` chooses (`clipray.text.encoding`): `tokenize`
(CLIP BPE ids) or `render_text` (CLIPPO rendering).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from clipray.config import ConfigError
from clipray.data.ops.base import Batch, CountingStats, Op, batch_len, op_registry
from clipray.data.ops.text import EncodeText
from clipray.data.sources import Source, check_columns, read_parquet, resolve
from clipray.text.encoding import OP_NAMES, TEXT_COLUMNS, text_encoding

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from clipray.config import PipelineConfig
    from clipray.config.schema import DataConfig
    from clipray.data.ops.filters import Claims
    from clipray.data.stats import SharedDedup

TRAIN_OPS = ("decode", "clean_caption", "image_transform", "encode_text")  # the minimal chain
OUTPUT_COLUMNS = ("key", "image", *TEXT_COLUMNS)


def build_ops(config: PipelineConfig, *, train: bool, names: Sequence[str] | None = None) -> list[Op]:
    """The ops named in `names` (default: `data.ops`), in order (`op_names`)."""
    return [op_registry.get(name)(config, train=train) for name in op_names(config, names)]


def op_names(config: PipelineConfig, names: Sequence[str] | None = None) -> tuple[str, ...]:
    """`names` (default: `data.ops` plus the configured curation filters) with `encode_text` named
    as the op of the text encoding. A text op of the other encoding is refused: `tokenize` with
    text_encoding.kind=pixels would otherwise write a column the text tower does not read."""
    encoding = text_encoding(config)
    text_op = encoding.op_name
    chosen = config.data.ops if names is None else names
    if names is None:
        chosen = with_curation_ops(config, chosen)
    wrong = [name for name in chosen if name in OP_NAMES and name != text_op]
    if wrong:
        raise ConfigError(f"data.ops lists {wrong[0]!r} but text_encoding.kind={encoding.kind} "
                          f"encodes captions with {text_op!r}: list 'encode_text' (the op the kind chooses)")
    return tuple(text_op if name == "encode_text" else name for name in chosen)


def with_curation_ops(config: PipelineConfig, names: Sequence[str]) -> list[str]:
    """`names` plus the curation filters that are configured but not listed: `where` first (it
    reads only metadata columns, before any decode), `language` after `clean_caption`."""
    out = list(names)
    if config.data.where and "where" not in out:
        out.insert(0, "where")
    if config.data.languages and "language" not in out:
        at = out.index("clean_caption") + 1 if "clean_caption" in out else len([n for n in out if n == "where"])
        out.insert(at, "language")
    return out


def arrow_to_columns(table: Any) -> Batch:
    """A pyarrow batch as dict of numpy columns; string columns arrive as raw bytes where invalid.

    Converting an Arrow string column with invalid UTF-8 to Python raises for the whole batch, so
    string columns are viewed as binary and decoded per row: the caption op then drops the bad
    rows (`invalid_caption`) and keeps the rest.
    """
    import pyarrow as pa

    out: Batch = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            raw = col.cast(pa.large_binary() if pa.types.is_large_string(col.type) else pa.binary())
            values = raw.to_numpy(zero_copy_only=False)
            out[name] = np.array([_utf8_or_bytes(v) for v in values], dtype=object)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def _utf8_or_bytes(v: bytes | None) -> str | bytes | None:
    if v is None:
        return None
    try:
        return v.decode("utf-8")
    except UnicodeDecodeError:
        return v


class Preprocess:
    """Run a chain of ops over one batch and report rows in/out and drops to the stats actor."""

    def __init__(self, config: PipelineConfig, *, train: bool, stats: Any = None,
                 names: Sequence[str] | None = None, dedup: Any = None) -> None:
        self.ops = build_ops(config, train=train, names=names)
        for op in self.ops:
            if hasattr(op, "attach"):
                op.attach(dedup=dedup)  # shared state of one dataset (clipray.data.stats.SharedDedup)
        self.stats = stats  # a Ray actor handle, a PipelineStats, or None
        self.key_column = config.data.key_column
        self.output_columns = OUTPUT_COLUMNS + tuple(config.data.partition_columns)

    def __call__(self, batch: Any) -> Batch:
        start = time.perf_counter()
        counts = CountingStats()
        if not isinstance(batch, dict):
            batch = arrow_to_columns(batch)
        rows_in = batch_len(batch)
        if self.key_column != "key" and self.key_column in batch:
            batch = dict(batch)
            batch["key"] = batch.pop(self.key_column)
        for op in self.ops:
            batch = op(batch, counts)
            if batch_len(batch) == 0:
                break
        out = {name: batch[name] for name in self.output_columns if name in batch}
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


class PreprocessBlocks(Preprocess):
    """`Preprocess` over whole Ray Data blocks, yielding one output batch per `data.batch_size` rows.

    Asked for fixed-size batches, Ray Data's batcher first combines the chunks of every block it
    has to cut (one contiguous copy of the block's image bytes into fresh memory, the costliest
    step of a preprocessing actor's main thread here); a slice of a table is zero-copy.
    """

    def __init__(self, config: PipelineConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.batch_size = config.data.batch_size

    def __call__(self, block: pa.Table) -> Iterator[Batch]:  # type: ignore[override]
        # An empty block still makes one (empty) call, so that its schema reaches the output.
        for start in range(0, max(block.num_rows, 1), self.batch_size):
            yield super().__call__(block.slice(start, self.batch_size))


def _empty_output(batch: Batch) -> Batch:
    import numpy as np

    return {"key": np.array([], dtype=object)} if "key" in batch else {}


class SkipKeys:
    """Drop rows whose key is in `keys` (the rows a resumed chunk already consumed)."""

    def __init__(self, keys: Collection[str], key_column: str) -> None:
        self.keys = frozenset(keys)
        self.key_column = key_column

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        keys = table.column(self.key_column).cast(pa.string())
        return table.filter(pc.invert(pc.is_in(keys, value_set=pa.array(sorted(self.keys), pa.string()))))


def open_dedup(config: PipelineConfig, stats: Any = None, claims: Claims | None = None) -> SharedDedup | None:
    """The duplicate-image index of one dataset execution (None when `data.ops` does not dedup),
    seeded with `claims` (those of a resumed chunk's consumed rows)."""
    from clipray.data.stats import shared_dedup

    if not (config.data.dedup_images and config.data.dedup != "off" and "dedup_images" in config.data.ops):
        return None
    # In the stats actor when there is one: a process fewer to start per dataset.
    return shared_dedup(stats if hasattr(getattr(stats, "open_dedup", None), "remote") else None, claims)


def build_dataset(config: PipelineConfig, *, train: bool = True, stats: Any = None, seed: int | None = None,
                  source: str | None = None, files: Sequence[str] | None = None,
                  resolved: Source | None = None, skip_keys: Collection[str] = (),
                  dedup: SharedDedup | None = None) -> ray.data.Dataset:
    """The lazy Ray Dataset of preprocessed rows for training (or evaluation when train=False).

    `skip_keys`: rows to leave out before any preprocessing (consumed before a resume); `dedup`:
    the duplicate index to use (`open_dedup`, seeded with those rows' claims), else a new one.

    `files`: read exactly these parquet files (paths as `list_source_files` returns them), in this
    order, instead of listing `source`; used to rebuild a partial epoch on resume.
    `resolved`: the result of `resolve_source(config)` when the caller checked the source already
    (before starting Ray), so that it is not listed twice.
    """
    from ray.data import ActorPoolStrategy, DataContext

    ctx = DataContext.get_current()
    if not sys.stderr.isatty():  # per-operator bars are unreadable in logs; keep the overall one
        ctx.enable_operator_progress_bars = False
    if train:
        # Blocks leave the actor pool in input order and streaming_split deals them out in that
        # order (Ray ignores locality hints then), so every worker sees the same rows in the same
        # order on every run. The dataset keeps a copy of this context, taken when it is built.
        ctx.execution_options.preserve_order = config.data.preserve_order
    d = config.data
    src = resolved if resolved is not None and files is None else resolve_source(config, source=source, files=files)
    shuffle_seed: int | None = seed if seed is not None else (
        d.shuffle_seed if d.shuffle_seed is not None else config.train.seed)
    if files is not None:
        shuffle_seed = None  # an explicit list is read in its own order
    names = tuple(config.data.ops)
    _check_cpu_budget(d)
    if dedup is None:
        dedup = open_dedup(config, stats)
    ds = read_parquet(src, columns=[*read_columns(config), *d.partition_columns],
                      shuffle_seed=shuffle_seed if train else None, num_cpus=d.num_cpus,
                      include_paths=dedup is not None)
    if skip_keys:
        ds = ds.map_batches(SkipKeys(skip_keys, d.key_column), batch_format="pyarrow", num_cpus=d.num_cpus)
    return ds.map_batches(
        PreprocessBlocks,
        fn_constructor_args=(config,),
        fn_constructor_kwargs={"train": train, "stats": stats, "names": names, "dedup": dedup},
        batch_size=None,  # whole blocks, cut into data.batch_size rows by PreprocessBlocks
        batch_format="pyarrow",  # converted in Preprocess, which survives invalid UTF-8 (arrow_to_columns)
        zero_copy_batch=True,
        # A fixed pool: scaling up from one actor takes Ray Data tens of seconds (the pool runs
        # short of its CPUs meanwhile), and each scale-down and back up pays an actor's start-up
        # (imports, tokenizer tables) again in the middle of the stream.
        compute=ActorPoolStrategy(size=d.concurrency),
        num_cpus=d.num_cpus,
    )


def _check_cpu_budget(d: DataConfig) -> None:
    """Warn when the actor pool leaves no CPU for a read task: Ray Data then waits forever."""
    import logging

    import ray

    need = (d.concurrency + 1) * d.num_cpus  # every actor, plus one parquet read task beside them
    have = ray.cluster_resources().get("CPU", 0.0) if ray.is_initialized() else None
    if have is not None and need > have:
        logging.getLogger(__name__).warning(
            "data.concurrency=%d actors x data.num_cpus=%g plus one read task need %g CPUs, but the cluster "
            "has %g: the reads can stall once every actor runs. Lower data.num_cpus or data.concurrency.",
            d.concurrency, d.num_cpus, need, have)


def required_columns(config: PipelineConfig) -> list[str]:
    d = config.data
    return [d.key_column, d.caption_column, d.image_column]


def read_columns(config: PipelineConfig) -> list[str]:
    """What the read projects: the required columns, and those `data.where` compares."""
    from clipray.data.ops.curation import parse_predicates

    d = config.data
    extra = [p.column for p in parse_predicates(d.where) if p.column not in d.partition_columns]
    return list(dict.fromkeys([*required_columns(config), *extra]))


def resolve_source(config: PipelineConfig, *, source: str | None = None,
                   files: Sequence[str] | None = None) -> Source:
    """List (or take) the files, check S3 access and required columns; all before Ray Data starts."""
    d = config.data
    src = resolve(source or d.source, d.endpoint_url, partition_filter=d.partition_filter, timeout_s=d.connect_timeout_s,
                  retry_s=d.s3_retry_s)
    if files is not None:
        src = Source(list(files), src.filesystem, src.root, src.uri, src.endpoint)
    check_columns(src, required_columns(config), retry_s=d.s3_retry_s)
    if d.where:
        from clipray.data.curate.preflight import check_where

        check_where(src, d.where, d.partition_columns)
    return src


def preflight(config: PipelineConfig) -> Source:
    """What the data stages need, checked in this process before Ray starts: the source
    (`resolve_source`) and every op of `data.ops`, built once here. A bad op setting (an unknown
    tokenizer, a missing vocabulary or font file) is then one line from the command instead of a
    traceback from every preprocessing actor, after the cluster and the workers have started."""
    from clipray.data.curate.preflight import refuse_dataset_wide

    refuse_dataset_wide(config)
    src = resolve_source(config)
    ops = build_ops(config, train=True)
    encoding = text_encoding(config)
    encoders = [op.encoder for op in ops if isinstance(op, EncodeText)]
    encoding.check_vocabulary(encoders[0] if encoders else None)
    return src


def list_source_files(config: PipelineConfig, source: str | None = None) -> list[str]:
    """The sorted parquet files of `data.source` after the partition filter (as `files=` takes them)."""
    return resolve_source(config, source=source).files
