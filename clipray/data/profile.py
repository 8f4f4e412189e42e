"""`clipray data profile`: run only the data stages and count what comes out."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

from clipray.config import PipelineConfig


def profile(config: PipelineConfig, *, limit: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """rows_in (every parquet row read), rows_out, drops by reason, rows/s."""
    import ray

    from clipray.data.pipeline import build_dataset, preflight
    from clipray.data.stats import stats_actor
    from clipray.runtime import init_ray

    # With --json, stdout must hold the JSON object alone: send anything else to stderr.
    with contextlib.redirect_stdout(sys.stderr) if quiet else contextlib.nullcontext():
        src = preflight(config)  # endpoint, credentials, columns, the ops' settings: before Ray starts
        init_ray(config)
        stats = stats_actor()
        ds = build_dataset(config, train=True, stats=stats, resolved=src)
        start = time.monotonic()
        rows = 0
        for batch in ds.iter_batches(batch_size=config.data.batch_size, batch_format="numpy"):
            rows += len(batch["key"]) if "key" in batch else 0
            if limit is not None and rows >= limit:
                break
        elapsed = time.monotonic() - start
        snap = ray.get(stats.snapshot.remote())
    return {
        "source": config.data.source,
        "rows_in": snap["rows_in"],
        "rows_out": snap["rows_out"],
        "dropped": snap["dropped"],
        "rows_delivered": rows,
        "elapsed_s": round(elapsed, 3),
        "rows_per_s": snap["rows_in"] / elapsed if elapsed > 0 else 0.0,
        "stage_busy_s": snap["busy_s"],
        "stage_rows_per_s": snap["rows_in"] / snap["busy_s"] if snap["busy_s"] > 0 else 0.0,
        "cpus": os.cpu_count(),
    }
