"""`clipray bench curate`: the cost of curation, per core and relative to a plain read.

In one run, on real clip art (`clipray realdata --set openclipart`, with planted copies):
  - hashing: rows/s on one core of the near-duplicate signature (decode at a reduced scale, trim,
    dhash + 4x4 colour grid), the per-row work of `data.dedup: near` and decontamination;
  - scoring: rows/s on one core (or the GPU) of the CLIP-score stage with the model of
    `--pipeline` (random weights: the cost, not the scores, is measured);
  - the dataset-wide pass: wall time of `clipray data curate` (all passes, Ray) beside one plain
    Ray Data read of the same files (read_parquet, every block consumed), and their ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from clipray.bench import Benchmark, bench_registry


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=2000, help="openclipart images (before planted copies)")
    p.add_argument("--copies", type=int, default=400, help="planted altered copies")
    p.add_argument("--pipeline", default="pipelines/curate-openclipart.yaml", help="config (model for scoring)")
    p.add_argument("--score-rows", type=int, default=256, help="rows scored in the per-core measurement")
    p.add_argument("--data", default=None, help="reuse this directory for the generated data")


def make_data(root: Path, rows: int, copies: int) -> Path:
    """openclipart rows plus `copies` altered copies, as one training directory."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipray.data.curate.plant import KINDS, alter
    from clipray.data.realsets import write_openclipart

    train = root / "train"
    if (train / "part-00000.parquet").exists():
        return train
    write_openclipart(root / "src", max_rows=rows, image_size=256, shards=4)
    table = pq.read_table(root / "src" / "train")
    rng = np.random.default_rng(0)
    idx = rng.choice(table.num_rows, size=min(copies, table.num_rows), replace=True)
    jpg = table.column("jpg").to_pylist()
    planted = table.take(pa.array(idx)).set_column(
        table.schema.get_field_index("jpg"), "jpg",
        pa.array([alter(jpg[i], KINDS[n % len(KINDS)], rng) for n, i in enumerate(idx)], pa.binary()))
    keys = table.column("key").to_pylist()
    planted = planted.set_column(0, "key", pa.array([f"copy-{n:05d}-of-{keys[i]}" for n, i in enumerate(idx)]))
    both = pa.concat_tables([table, planted])
    train.mkdir(parents=True)
    for s, start in enumerate(range(0, both.num_rows, 1000)):
        pq.write_table(both.slice(start, 1000), train / f"part-{s:05d}.parquet")
    return train


def hash_rate(images: list[bytes]) -> float:
    from clipray.data.curate.near import signature_of_bytes

    start = time.perf_counter()
    for data in images:
        signature_of_bytes(data)
    return len(images) / (time.perf_counter() - start)


def score_rate(config: Any, images: list[bytes], captions: list[str]) -> tuple[float, str]:
    import torch

    from clipray.config import to_dict
    from clipray.curation.score import ModelEncoder
    from clipray.models import build_model

    torch.set_num_threads(1)
    state = build_model(config.model).state_dict()
    encoder = ModelEncoder(to_dict(config), state)
    encoder.scores(images[:8], captions[:8])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(images), 64):
        encoder.scores(images[i:i + 64], captions[i:i + 64])
    return len(images) / (time.perf_counter() - start), str(encoder.device)


def plain_read_s(config: Any, source: str) -> float:
    from clipray.data.sources import read_parquet, resolve

    start = time.perf_counter()
    ds = read_parquet(resolve(source), num_cpus=config.data.num_cpus)
    rows = sum(len(b["key"]) for b in ds.iter_batches(batch_size=1024, batch_format="pyarrow"))
    assert rows > 0
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from clipray.config import load_config
    from clipray.curation.run import curate
    from clipray.runtime import init_ray

    root = Path(args.data or tempfile.mkdtemp(prefix="clipray-bench-curate-"))
    train = make_data(root, args.rows, args.copies)
    table = pq.read_table(train)
    images = table.column("jpg").to_pylist()
    captions = table.column("caption").to_pylist()
    config = load_config(args.pipeline, [f"data.source={train}", "data.decontaminate=false",
                                         "tracking.tracking_uri=sqlite:///" + str(root / "mlflow.db")])
    h = hash_rate(images[:1000])
    s, device = score_rate(config, images[: args.score_rows], captions[: args.score_rows])
    init_ray(config)
    read_s = min(plain_read_s(config, str(train)) for _ in range(2))  # the second read: warm page cache
    result = curate(config, str(root / "curated"), quiet=True, log=False)
    cores = os.cpu_count()
    print(f"rows: {table.num_rows} ({args.copies} planted copies), {sum(len(b) for b in images) / 2**20:.0f} MiB "
          f"of images, {cores} cores")
    print(f"hashing (signature per row), 1 core:     {h:8.1f} rows/s")
    print(f"CLIP scoring ({config.model.vision.width}-wide ViT), 1 core ({device}): {s:8.1f} rows/s")
    print(f"plain Ray Data read of the same files:   {read_s:8.2f} s")
    print(f"clipray data curate (dedup near, 3 passes): {result.elapsed_s:8.2f} s  = {result.elapsed_s / read_s:.1f}x "
          f"the plain read; {result.rows_in / result.elapsed_s:.0f} rows/s; dropped {result.dropped}")
    print(f"quality (counts; the same on any machine): {planted_figures(table, root / 'curated').line()}")
    return 0


def planted_figures(table: Any, curated: Path) -> Any:
    """The planted copies (keys `copy-N-of-<original>`) removed and the distinct images lost."""
    import pyarrow.parquet as pq

    from clipray.data.curate.plant import planted_quality

    groups: dict[str, list[str]] = {}
    keys = table.column("key").to_pylist()
    for key in keys:
        if key.startswith("copy-"):
            groups.setdefault(key.split("-of-", 1)[1], []).append(key)
    kept = set(pq.read_table(sorted(str(p) for p in curated.glob("*.parquet")), columns=["key"]).column("key").to_pylist())
    distinct = [k for k in keys if not k.startswith("copy-") and k not in groups]
    return planted_quality(groups, distinct, kept)


bench_registry.register("curate")(Benchmark(
    help="curation cost: hashing and CLIP-scoring rows/s per core, curate's passes vs one plain read",
    add_arguments=add_arguments, run=run))
