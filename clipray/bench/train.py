"""`clipray bench train`: training throughput of a tiny CLIP on CPU, clipray beside plain PyTorch.

Both sides train the same model config on the same synthetic parquet, on the same machine, in
one run:
  - clipray: `clipray.train.launcher.train` — Ray Data stages (decode, clean, transform, tokenize)
    in actors feeding Ray Train TorchTrainer workers, logged to MLflow (a throwaway SQLite store);
  - baseline: one Python process, no Ray: pyarrow reads the same files, the same ops preprocess
    each batch inline, and the same model trains with all the torch threads the cores allow.
samples/s is steady state: the median of the per-interval rates after the first `--warmup`
steps, so Ray start-up and compilation are excluded on both sides (start-up is reported apart).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from clipray.bench import Benchmark, bench_registry
from clipray.errors import InvalidInputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", default="pipelines/tiny/clip-tiny.yaml", help="model/data config to train")
    p.add_argument("--rows", type=int, default=2048, help="synthetic training rows")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps on each side")
    p.add_argument("--warmup", type=int, default=10, help="steps excluded from the rate")
    p.add_argument("--batch-size", type=int, default=64, help="global batch")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--cores", type=int, default=None, help="cores both sides may use (default: all)")


def bench_config(args: argparse.Namespace, source: str, cores: int) -> Any:
    from clipray.config import load_config

    workers = args.workers
    # Ray side: one CPU per train worker (torch threads = 1 each), the rest to preprocessing actors.
    data_cpus = max(1, cores - workers)
    return load_config(args.pipeline, [
        f"data.source={source}", "eval.zeroshot_source=null", "eval.every_steps=null",
        f"train.steps={args.steps}", f"train.global_batch_size={args.batch_size}", f"train.num_workers={workers}",
        "train.cpus_per_worker=1", "train.torch_threads=1", "train.log_every=5",
        f"train.checkpoint_every={args.steps}", f"data.concurrency={data_cpus}", "data.num_cpus=0.5",
        f"ray.num_cpus={cores + 1}",
    ])


def _steady_rate(history: list[tuple[int, float]], warmup: int) -> float:
    rates = [v for step, v in sorted(history) if step > warmup]
    if not rates:
        raise InvalidInputError("no logged interval after warm-up: raise --steps")
    return statistics.median(rates)


def run_clipray(config: Any, tracking_uri: str, warmup: int) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    from clipray.train.launcher import train

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    started = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - started
    history = [(m.step, m.value) for m in MlflowClient(tracking_uri).get_metric_history(result.run_id,
                                                                                       "train/samples_per_s")]
    return {"samples_per_s": _steady_rate(history, warmup), "wall_s": wall}


def plain_batches(config: Any, batch: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Endless preprocessed batches from the parquet files, in this process (no Ray)."""
    import glob

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from clipray.data.pipeline import Preprocess

    d = config.data
    files = sorted(glob.glob(os.path.join(d.source, "*.parquet")))
    table = pa.concat_tables([pq.read_table(f, columns=[d.key_column, d.caption_column, d.image_column])
                              for f in files])
    prep = Preprocess(config, train=True)
    rng = np.random.default_rng(seed)
    pending: dict[str, list[Any]] = {"image": [], "tokens": []}
    while True:
        order = rng.permutation(table.num_rows)
        for i in range(0, len(order), d.batch_size):
            t = table.take(pa.array(order[i : i + d.batch_size]))
            out = prep({d.key_column: t.column(d.key_column).to_numpy(zero_copy_only=False),
                        d.caption_column: t.column(d.caption_column).to_numpy(zero_copy_only=False),
                        d.image_column: t.column(d.image_column).to_pylist()})
            pending["image"].extend(out["image"])
            pending["tokens"].extend(out["tokens"])
            while len(pending["image"]) >= batch:
                yield {k: torch.from_numpy(np.stack(v[:batch])) for k, v in pending.items()}
                pending = {k: v[batch:] for k, v in pending.items()}


def run_plain(config: Any, cores: int, warmup: int) -> dict[str, float]:
    """The same model, optimizer and loss in a bare PyTorch loop."""
    import torch

    from clipray.train.objectives import build_objective
    from clipray.train.optim import build_optimizer

    torch.set_num_threads(cores)
    torch.manual_seed(config.train.seed)
    objective = build_objective(config, rank=0, world_size=1, device=torch.device("cpu"))
    optimizer = build_optimizer(objective.module, config.optim)
    batches = plain_batches(config, config.train.global_batch_size)
    rates, samples = [], 0
    started = last = time.perf_counter()
    for step in range(1, config.train.steps + 1):
        losses, _ = objective(next(batches))
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        objective.after_step()
        samples += config.train.global_batch_size
        if step % config.train.log_every == 0:
            now = time.perf_counter()
            rates.append((step, samples / (now - last)))
            samples, last = 0, now
    return {"samples_per_s": _steady_rate(rates, warmup), "wall_s": time.perf_counter() - started}


def run(args: argparse.Namespace) -> int:
    from clipray.data.synth import write_synthetic

    cores = args.cores or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="clipray-bench-train-") as tmp:
        write_synthetic(tmp, args.rows, shards=4, seed=0, image_size=32, eval_per_class=1)
        config = bench_config(args, os.path.join(tmp, "train"), cores)
        print(f"tiny CLIP ({args.pipeline}), {args.rows} synthetic rows, global batch {args.batch_size}, "
              f"{args.steps} steps, {cores} cores; rate = median after {args.warmup} warm-up steps", flush=True)
        plain = run_plain(config, cores, args.warmup)
        print(f"baseline done: {plain['samples_per_s']:.0f} samples/s", flush=True)
        ours = run_clipray(config, f"sqlite:///{tmp}/mlflow.db", args.warmup)
    print("\n| pipeline | samples/s (steady) | wall incl. start-up (s) |")
    print("|---|---|---|")
    print(f"| plain PyTorch loop, 1 process, {cores} torch threads, inline preprocessing | "
          f"{plain['samples_per_s']:.0f} | {plain['wall_s']:.1f} |")
    print(f"| clipray: Ray Data ({config.data.concurrency} actor(s)) -> Ray Train ({config.train.num_workers} "
          f"worker(s)) | {ours['samples_per_s']:.0f} | {ours['wall_s']:.1f} |")
    print(f"clipray / baseline: {ours['samples_per_s'] / plain['samples_per_s']:.2f}x")
    return 0


bench_registry.register("train")(Benchmark(help="tiny CLIP on CPU: Ray pipeline beside a plain PyTorch loop, "
                                                "samples/s", add_arguments=add_arguments, run=run))
