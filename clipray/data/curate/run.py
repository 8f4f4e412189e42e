"""The row stages of `clipray data curate` (its driver is clipray.curation.run).

    CurateRows (pass 1, a pool of actors over the blocks): the row ops of data.ops (decode,
      filters, caption clean-up, where, language), perceptual hashes, eval_overlap; emits the
      ORIGINAL row (bytes and caption as stored) plus the signature columns
    DropNear (pass 3): the staged rows minus the near-duplicate keys, signature columns dropped
    read_manifest / log_curated_source: the manifest (`curation.json`) beside curated data, and
      its record in a training run

Nothing here starts Ray, opens an MLflow run or loads a model: those are the driver's.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from clipray.data.curate.near import (
    AREA_COLUMN,
    COLOR_COLUMN,
    HASH_COLUMN,
    EvalOverlap,
    Thresholds,
    grids,
    signature_of_bytes,
)
from clipray.data.ops.base import CountingStats, batch_len

if TYPE_CHECKING:
    import pyarrow as pa

    from clipray.config import PipelineConfig

MANIFEST = "curation.json"
STAGING = "_staging"
# Ops that shape training inputs; curation keeps the stored bytes, so they never run here.
TRAINING_ONLY_OPS = ("image_transform", "tokenize", "render_text")
ROW_INDEX = "__row"


def thresholds(config: PipelineConfig) -> Thresholds:
    return Thresholds(config.data.near_threshold, config.data.near_color_threshold)


def curate_op_names(config: PipelineConfig) -> list[str]:
    """The row ops curate runs: data.ops without the training transforms, with the configured
    curation filters, and the perceptual hash after decode when near duplicates or evaluation
    overlap are to be found."""
    from clipray.data.pipeline import op_names

    names = [n for n in op_names(config) if n not in TRAINING_ONLY_OPS]
    if needs_signatures(config):
        # before decode, which drops the bytes from the batch (rows it cannot read are dropped
        # there, before eval_overlap, which runs last)
        at = names.index("decode") if "decode" in names else len(names)
        names.insert(at, "near_hash")
    return names


def needs_signatures(config: PipelineConfig) -> bool:
    return config.data.dedup == "near" or bool(config.data.decontaminate)


class CurateRows:
    """One pass-1 actor: the row ops over each block, emitting the surviving rows as stored."""

    def __init__(self, config: PipelineConfig, *, stats: Any = None, eval_signatures: Any = None,
                 dedup: Any = None) -> None:
        from clipray.data.pipeline import build_ops

        self.ops = build_ops(config, train=False, names=curate_op_names(config))
        for op in self.ops:
            if hasattr(op, "attach"):
                op.attach(dedup=dedup)
        if eval_signatures is not None:
            import ray

            sig = ray.get(eval_signatures) if isinstance(eval_signatures, ray.ObjectRef) else eval_signatures
            if len(sig[0]):
                self.ops.append(EvalOverlap(sig[0], sig[1], thresholds(config)))
        self.stats = stats
        self.key_column = config.data.key_column
        self.keep_signatures = needs_signatures(config)
        # `path` comes from the reader (include_paths) when per-file exact dedup runs.
        self.drop_path = dedup is not None

    def __call__(self, table: pa.Table) -> pa.Table:
        import pyarrow as pa

        from clipray.data.pipeline import arrow_to_columns

        start = time.perf_counter()
        counts = CountingStats()
        batch = arrow_to_columns(table)
        if self.key_column != "key":
            batch["key"] = batch[self.key_column]
        batch[ROW_INDEX] = np.arange(table.num_rows)
        for op in self.ops:
            batch = op(batch, counts)
            if batch_len(batch) == 0:
                break
        rows = np.asarray(batch.get(ROW_INDEX, np.zeros(0, np.int64)), dtype=np.int64)
        out = table.take(pa.array(rows, pa.int64()))
        if self.drop_path and "path" in out.column_names:
            out = out.drop_columns(["path"])
        if self.keep_signatures:
            n = len(rows)
            out = out.append_column(HASH_COLUMN, pa.array(np.asarray(batch.get(HASH_COLUMN, []), np.uint64)[:n]))
            out = out.append_column(COLOR_COLUMN, pa.array(list(batch.get(COLOR_COLUMN, []))[:n], pa.binary()))
            out = out.append_column(AREA_COLUMN, pa.array(np.asarray(batch.get(AREA_COLUMN, []), np.int64)[:n]))
        _report(self.stats, table.num_rows, out.num_rows, dict(counts.dropped), time.perf_counter() - start)
        return out



def _report(stats: Any, rows_in: int, rows_out: int, dropped: dict[str, int], busy_s: float) -> None:
    if stats is None:
        return
    if hasattr(stats.add, "remote"):
        import ray

        ray.get(stats.add.remote(rows_in, rows_out, dropped, busy_s))
    else:
        stats.add(rows_in, rows_out, dropped, busy_s)


class DropNear:
    """Pass 3: leaves out the rows of `dropped` keys (counted `near_duplicate`) and the
    signature columns (kept only when asked)."""

    def __init__(self, dropped: set[str], stats: Any, drop_columns: tuple[str, ...]) -> None:
        self.dropped = dropped
        self.stats = stats
        self.drop_columns = drop_columns

    def __call__(self, table: pa.Table) -> pa.Table:
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.dropped:
            keys = table.column("key").cast(pa.string())
            gone = pc.is_in(keys, value_set=pa.array(sorted(self.dropped), pa.string()))
            n = int(pc.sum(gone).as_py() or 0)
            table = table.filter(pc.invert(gone))
        else:
            n = 0
        _report(self.stats, 0, -n, {"near_duplicate": n} if n else {}, 0.0)
        return table.drop_columns([c for c in self.drop_columns if c in table.column_names])


def eval_sources(config: PipelineConfig) -> list[str]:
    d = config.data
    if isinstance(d.decontaminate, list):
        return list(d.decontaminate)
    if d.decontaminate and config.eval.zeroshot_source:
        return [config.eval.zeroshot_source]
    return []


def eval_signatures(config: PipelineConfig, sources: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Signatures of every image of the evaluation sets, computed here (they are small)."""
    import pyarrow.parquet as pq

    from clipray.data.sources import resolve

    hashes: list[int] = []
    colors: list[bytes] = []
    for source in sources:
        src = resolve(source, config.data.endpoint_url, timeout_s=config.data.connect_timeout_s)
        for path in src.files:
            table = pq.read_table(path, columns=[config.data.image_column], filesystem=src.filesystem)
            for data in table.column(0).to_pylist():
                if data:
                    try:
                        h, c, _ = signature_of_bytes(data)
                    except Exception:
                        continue  # an unreadable evaluation image cannot be matched
                    hashes.append(h)
                    colors.append(c)
    return np.array(hashes, dtype=np.uint64), grids(colors)


def read_manifest(source: str) -> dict[str, Any] | None:
    """The curation manifest beside a data source (a directory or s3:// prefix), if any."""
    from clipray.data.sources import read_bytes

    if not source or any(ch in source for ch in "*?["):
        return None
    try:
        return json.loads(read_bytes(f"{source.rstrip('/')}/{MANIFEST}"))
    except (FileNotFoundError, OSError, ValueError):
        return None


def manifest_record(manifest: dict[str, Any]) -> tuple[dict[str, str], dict[str, float]]:
    """Params and metrics of a training run that reads curated data (`data/curated/...`)."""
    params = {"data/curated/source": str(manifest.get("source", "")),
              "data/curated/mlflow_run_id": str(manifest.get("mlflow_run_id", ""))}
    metrics = {"data/curated/rows_in": float(manifest["rows_in"]),
               "data/curated/rows_out": float(manifest["rows_out"])}
    metrics.update({f"data/curated/dropped/{k}": float(v) for k, v in manifest.get("dropped", {}).items()})
    return params, metrics


def log_curated_source(tracker: Any, config: PipelineConfig) -> dict[str, Any] | None:
    """Log the manifest of a curated `data.source` into a training run (no-op for other data)."""
    manifest = read_manifest(config.data.source)
    if manifest is None:
        return None
    params, metrics = manifest_record(manifest)
    tracker.log_params(params)
    tracker.log_metrics(metrics, step=0)
    return manifest

