"""`clipray data curate`: the pipeline's row stages plus curation, written back as img2dataset parquet.

    read_parquet (all columns)
      -> CurateRows actors (clipray.data.curate.run): the row ops, perceptual hashes,
         eval_overlap; emits the ORIGINAL row plus the signature columns
      -> [ClipScorer actors: image-text cosine similarity, low_clip_score (clipray.curation.score)]
      -> staging parquet under OUT/_staging/         (pass 1: one streaming pass over the images)
      -> signatures only (key, hash, colour grid, area): banding + groupby -> verified pairs ->
         the keep rule (pass 2, clipray.data.curate.near)
      -> staging minus near_duplicate rows, signature columns dropped -> OUT/*.parquet (pass 3)
      -> OUT/curation.json: counts by reason; an MLflow run with the same counts and a picture of
         removed duplicate groups beside the kept copy

Every pass streams: no stage holds more than a block of images at a time, and the dataset-wide
pass moves 64 bytes per row (plus the key) instead of the images. This driver sits above data/:
it starts Ray, records the MLflow run and resolves the scoring model.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipray.data.curate.near import SIGNATURE_COLUMNS, NearGroups, find_near_duplicates
from clipray.data.curate.run import (
    MANIFEST,
    STAGING,
    CurateRows,
    DropNear,
    curate_op_names,
    eval_signatures,
    eval_sources,
    thresholds,
)
from clipray.data.curate.score import SCORE_COLUMN

if TYPE_CHECKING:
    from clipray.config import PipelineConfig
    from clipray.data.sources import Source


@dataclass
class CurateResult:
    rows_in: int
    rows_out: int
    dropped: dict[str, int]
    out: str
    elapsed_s: float
    run_id: str | None = None
    tracking_uri: str | None = None
    groups: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out, "dropped": self.dropped, "out": self.out}



def _out_filesystem(out: str) -> tuple[Any, str]:
    from clipray.data.sources import filesystem_for

    fs, path = filesystem_for(out)
    return fs, path.rstrip("/")


def preflight_curate(config: PipelineConfig) -> Source:
    """Source, columns, predicates, op settings, evaluation sets and the scoring model: checked
    before Ray starts."""
    from clipray.data.pipeline import build_ops, resolve_source

    src = resolve_source(config)
    build_ops(config, train=False, names=curate_op_names(config))
    for source in eval_sources(config):
        from clipray.data.sources import resolve

        resolve(source, config.data.endpoint_url, timeout_s=config.data.connect_timeout_s)
    if config.data.min_clip_score is not None:
        from clipray.curation.score import resolve_score_model

        resolve_score_model(config.data.score_model or "", config.tracking.tracking_uri)
    return src


def curate(config: PipelineConfig, out: str, *, quiet: bool = False, log: bool = True) -> CurateResult:
    """Run the curation of `config.data.source` into `out` (a directory or s3:// URI)."""
    with contextlib.redirect_stdout(sys.stderr) if quiet else contextlib.nullcontext():
        return _curate(config, out, log=log)


def _curate(config: PipelineConfig, out: str, *, log: bool) -> CurateResult:
    import ray
    from ray.data import ActorPoolStrategy

    from clipray.data.pipeline import _check_cpu_budget, open_dedup
    from clipray.data.sources import read_parquet, resolve
    from clipray.data.stats import stats_actor
    from clipray.runtime import init_ray

    d = config.data
    src = preflight_curate(config)
    sources = eval_sources(config)
    evals = eval_signatures(config, sources) if sources else None
    init_ray(config)
    _check_cpu_budget(d)
    stats = stats_actor()
    started = time.monotonic()
    fs, out_path = _out_filesystem(out)
    staging = f"{out_path}/{STAGING}"
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_dir(staging)
    dedup = open_dedup(config, stats)
    ds = read_parquet(src, shuffle_seed=None, num_cpus=d.num_cpus, include_paths=dedup is not None)
    ds = ds.map_batches(
        CurateRows, fn_constructor_args=(config,),
        fn_constructor_kwargs={"stats": stats, "eval_signatures": ray.put(evals) if evals is not None else None,
                               "dedup": dedup},
        batch_size=d.batch_size, batch_format="pyarrow", zero_copy_batch=True,
        compute=ActorPoolStrategy(size=d.concurrency), num_cpus=d.num_cpus)
    if d.min_clip_score is not None:
        from clipray.curation.score import score_stage

        ds = score_stage(ds, config, stats)
    ds.write_parquet(staging, filesystem=fs)

    groups = NearGroups()
    if d.dedup == "near":
        signatures = read_parquet(resolve(_uri(out, staging), d.endpoint_url),
                                  columns=["key", *SIGNATURE_COLUMNS], num_cpus=d.num_cpus)
        # Shuffle partitions by size: Ray's default (200) is 200 reduce tasks even for a few
        # thousand rows; a partition of 10^6 signature rows is about 40 MB.
        staged_rows = ray.get(stats.snapshot.remote())["rows_out"]
        partitions = max(1, min(200, staged_rows * d.near_bands // 1_000_000 + 1))
        groups = find_near_duplicates(signatures, thresholds(config), d.near_bands, num_partitions=partitions)
    internal = tuple(SIGNATURE_COLUMNS) + (() if d.keep_scores else (SCORE_COLUMN,))
    final = read_parquet(resolve(_uri(out, staging), d.endpoint_url), num_cpus=d.num_cpus)
    final = final.map_batches(DropNear, fn_constructor_args=(groups.dropped, stats, internal),
                              batch_size=None, batch_format="pyarrow", compute=ActorPoolStrategy(size=1),
                              num_cpus=d.num_cpus)
    final.write_parquet(out_path, filesystem=fs)
    snap = ray.get(stats.snapshot.remote())
    elapsed = time.monotonic() - started
    result = CurateResult(snap["rows_in"], snap["rows_out"], dict(snap["dropped"]), out, elapsed,
                          groups=groups.groups())
    picture = _group_picture(fs, staging, result.groups, d.image_column) if result.groups else None
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_dir(staging)
    manifest = {**result.summary(), "elapsed_s": round(elapsed, 3),
                "rows_per_s": round(result.rows_in / elapsed, 3) if elapsed > 0 else 0.0,
                "source": d.source, "eval_sources": sources,
                "settings": {"where": d.where, "languages": d.languages, "dedup": d.dedup,
                             "near_threshold": d.near_threshold, "near_color_threshold": d.near_color_threshold,
                             "near_bands": d.near_bands, "min_clip_score": d.min_clip_score,
                             "score_model": d.score_model}}
    if log:
        result.run_id, result.tracking_uri = _log_run(config, manifest, picture)
        manifest["mlflow_run_id"] = result.run_id
    with fs.open_output_stream(f"{out_path}/{MANIFEST}") as f:
        f.write(json.dumps(manifest, indent=1).encode())
    return result


def _uri(out: str, path: str) -> str:
    return f"s3://{path}" if out.startswith("s3://") else path


def _group_picture(fs: Any, staging: str, groups: dict[str, list[str]], image_column: str,
                   n_groups: int = 6, per_group: int = 5) -> bytes | None:
    """A PNG: one line per removed group, the kept image first (green frame), the removed ones after."""
    import io

    import pyarrow.dataset as pds
    from PIL import Image, ImageDraw, ImageOps

    chosen = list(groups.items())[:n_groups]
    wanted = {k for kept, dropped in chosen for k in [kept, *dropped[: per_group - 1]]}
    try:
        dataset = pds.dataset(staging, filesystem=fs, format="parquet")
        table = dataset.to_table(columns=["key", image_column], filter=pds.field("key").isin(sorted(wanted)))
    except Exception:
        return None
    images = dict(zip(table.column("key").to_pylist(), table.column(image_column).to_pylist()))
    cell = 128
    sheet = Image.new("RGB", (cell * per_group, cell * len(chosen)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (kept, dropped) in enumerate(chosen):
        for col, key in enumerate([kept, *dropped[: per_group - 1]]):
            data = images.get(key)
            if not data:
                continue
            with Image.open(io.BytesIO(data)) as im:
                thumb = ImageOps.contain(im.convert("RGB"), (cell - 8, cell - 8))
            sheet.paste(thumb, (col * cell + 4, row * cell + 4))
            if col == 0:
                draw.rectangle([col * cell + 1, row * cell + 1, col * cell + cell - 2, row * cell + cell - 2],
                               outline=(0, 160, 0), width=3)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def _log_run(config: PipelineConfig, manifest: dict[str, Any], picture: bytes | None) -> tuple[str, str]:
    from clipray.config import to_dict
    from clipray.config.load import flatten
    from clipray.tracking import resolve_tracking_uri, start_run

    uri = resolve_tracking_uri(config.tracking.tracking_uri)
    tracker = start_run(config.tracking.experiment or config.name, uri, run_name="curate",
                        tags={"clipray.pipeline": config.name, "clipray.command": "curate"})
    status = "FAILED"
    try:
        tracker.log_params({f"config.{k}": v for k, v in flatten(to_dict(config)).items()
                            if k.startswith("data.")} | {"curate.out": manifest["out"]})
        metrics = {"curate/rows_in": manifest["rows_in"], "curate/rows_out": manifest["rows_out"],
                   "curate/rows_per_s": manifest["rows_per_s"]}
        metrics.update({f"curate/dropped/{k}": v for k, v in manifest["dropped"].items()})
        tracker.log_metrics(metrics, step=0)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MANIFEST
            path.write_text(json.dumps(manifest, indent=1))
            tracker.log_artifact(str(path))
            if picture is not None:
                pic = Path(tmp) / "near_duplicate_groups.png"
                pic.write_bytes(picture)
                tracker.log_artifact(str(pic))
        status = "FINISHED"
        return tracker.run_id, uri
    finally:
        tracker.close(status)


