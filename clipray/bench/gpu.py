"""`clipray bench gpu`: CLIP ViT-B/32 and ViT-B/16 training throughput and MFU on one CUDA GPU.

Two feeds per model, measured in one run:
  - synthetic: random uint8 images and token ids already on the GPU (the model's ceiling);
  - ray-data: the full clipray data path (parquet -> decode -> resize/crop -> tokenize as Ray
    Data actor stages -> `iter_torch_batches`) feeding the same compiled step, so a data-path
    shortfall shows as lower samples/s and a high blocked-on-data share.
MFU = samples/s x train FLOPs per sample / peak, with train FLOPs = 3 x forward FLOPs counted
from the config (`clipray.bench.flops`, loss excluded) and the GPU's dense bf16 peak: 989 TFLOP/s
(H100 SXM datasheet) and 790 (the planning figure, about what a large bf16 matmul reaches).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from clipray.bench import Benchmark, bench_registry
from clipray.bench.flops import train_flops_per_sample
from clipray.errors import UnknownNameError

PEAKS_TFLOPS = (989.0, 790.0)
MODELS = {"ViT-B/32": 32, "ViT-B/16": 16}
DEFAULT_BATCH = {"ViT-B/32": 1024, "ViT-B/16": 512}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="ViT-B/32,ViT-B/16", help="comma-separated: ViT-B/32, ViT-B/16")
    p.add_argument("--batch-size", type=int, default=None, help="per-step batch (default 1024 for B/32, 512 for B/16)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps first (compilation happens here)")
    p.add_argument("--no-compile", action="store_true", help="eager mode instead of torch.compile")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray Data-fed measurement")
    p.add_argument("--rows", type=int, default=4096, help="rows of synthetic 224 px parquet for the Ray Data feed")
    p.add_argument("--data-cpus", type=int, default=None, help="preprocessing actors (default: all cores but 2)")


def model_config(name: str) -> Any:
    from clipray.config.schema import ModelConfig, TextTowerConfig, VisionConfig

    if name not in MODELS:
        raise UnknownNameError(f"unknown model {name!r} for bench gpu; choose from {sorted(MODELS)}")
    return ModelConfig(embed_dim=512, vision=VisionConfig(image_size=224, patch_size=MODELS[name], width=768,
                                                          layers=12, heads=12),
                       text=TextTowerConfig(context_length=77, width=512, layers=12, heads=8))


def make_step(model_cfg: Any, compile_model: bool) -> tuple[Callable[[Any, Any], float], Any]:
    """A bf16-autocast train step (fused AdamW, SDPA attention, channels-last input) and the model."""
    import torch

    from clipray.config.schema import ImageConfig, OptimConfig
    from clipray.losses import softmax_contrastive_loss
    from clipray.models.clip.model import CLIP
    from clipray.models.common.image import to_model_input
    from clipray.train.optim import build_optimizer

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = CLIP(model_cfg).cuda()  # what build_model builds for family "clip", typed as CLIP
    opt = build_optimizer(model, OptimConfig())
    for g in opt.param_groups:
        g["fused"] = True
    mean, std = ImageConfig().mean, ImageConfig().std

    def loss_fn(images_u8: Any, tokens: Any) -> Any:
        x = to_model_input(images_u8, mean, std).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            img, txt, scale = model(x, tokens)
            return softmax_contrastive_loss(img.float(), txt.float(), scale, rank=0, world_size=1)

    fwd_bwd = torch.compile(loss_fn) if compile_model else loss_fn

    def step(images_u8: Any, tokens: Any) -> Any:
        loss = fwd_bwd(images_u8, tokens)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.clamp_logit_scale()
        return loss

    return step, model


def timed(step: Callable[[Any, Any], Any], batches: Iterator[tuple[Any, Any]], warmup: int,
          steps: int) -> dict[str, float]:
    """samples/s over `steps` after `warmup`; also the share of wall time spent waiting for batches."""
    import torch

    for _ in range(warmup):
        step(*next(batches))
    torch.cuda.synchronize()
    waited, n = 0.0, 0
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        images, tokens = next(batches)
        waited += time.perf_counter() - t0
        n += images.shape[0]
        step(images, tokens)
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return {"samples_per_s": n / wall, "blocked_share": waited / wall, "wall_s": wall}


def synthetic_batches(batch: int, context_length: int) -> Iterator[tuple[Any, Any]]:
    import torch

    g = torch.Generator(device="cuda").manual_seed(0)
    images = torch.randint(0, 256, (batch, 224, 224, 3), dtype=torch.uint8, device="cuda", generator=g)
    tokens = torch.randint(1, 49407, (batch, context_length), device="cuda", generator=g)
    tokens[:, -1] = 49407  # EOT last: argmax pooling finds it
    while True:
        yield images, tokens


def ray_batches(source: str, batch: int, data_cpus: int) -> Iterator[tuple[Any, Any]]:
    """Endless batches from the clipray Ray Data pipeline over `source`, epoch after epoch."""
    from clipray.config import load_config
    from clipray.data.pipeline import build_dataset
    from clipray.train.collate import TrainCollate

    config = load_config(data={
        "name": "bench-gpu", "data": {"source": source, "batch_size": 128, "num_cpus": 1, "concurrency": data_cpus},
        "model": {"vision": {"image_size": 224, "patch_size": 16}}, "text_encoding": {"tokenizer": "words"},
    })
    epoch = 0
    while True:
        ds = build_dataset(config, train=True, seed=epoch)
        for b in ds.iter_torch_batches(batch_size=batch, drop_last=True, collate_fn=TrainCollate(),
                                       prefetch_batches=4, device="cpu"):
            yield (b["image"].pin_memory().cuda(non_blocking=True),
                   b["tokens"].pin_memory().cuda(non_blocking=True).long())
        epoch += 1


def _row(name: str, feed: str, batch: int, r: dict[str, float], flops: int) -> str:
    mfu = [r["samples_per_s"] * flops / (p * 1e12) for p in PEAKS_TFLOPS]
    return (f"| {name} | {feed} | {batch} | {r['samples_per_s']:,.0f} | {r['samples_per_s'] * flops / 1e12:.0f} | "
            f"{mfu[0]:.1%} | {mfu[1]:.1%} | {r['blocked_share']:.1%} |")


def run(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        print("no GPU: `clipray bench gpu` needs a CUDA device and torch.cuda.is_available() is False here; "
              "nothing was measured.")
        return 0
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    configs = {n: model_config(n) for n in names}
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 autocast, "
          f"{'torch.compile' if not args.no_compile else 'eager'}, fused AdamW, SDPA attention")
    print("MFU = samples/s x 3 x forward FLOPs per sample (loss excluded) / dense bf16 peak "
          f"({PEAKS_TFLOPS[0]:.0f} TFLOP/s H100 SXM datasheet; {PEAKS_TFLOPS[1]:.0f} planning figure)")
    source = None
    if not args.no_ray:
        # One dataset execution must cover every measured step: a new epoch restarts the actor pool,
        # which would be measured as data-path time. The shards are repeated on disk to get there.
        need = (args.warmup + args.steps + 2) * max(args.batch_size or DEFAULT_BATCH[n] for n in names)
        source = _write_parquet(args.rows, copies=-(-need // args.rows))
    rows = []
    for name, cfg in configs.items():
        batch = args.batch_size or DEFAULT_BATCH[name]
        flops = train_flops_per_sample(cfg)
        print(f"{name}: {flops / 1e9:.1f} GFLOP per training sample, batch {batch}", flush=True)
        step, model = make_step(cfg, not args.no_compile)
        r = timed(step, synthetic_batches(batch, cfg.text.context_length), args.warmup, args.steps)
        rows.append(_row(name, "synthetic (in GPU memory)", batch, r, flops))
        print(rows[-1], flush=True)
        if source is not None:
            data_cpus = args.data_cpus or max(1, (os.cpu_count() or 4) - 2)
            try:
                r = timed(step, ray_batches(source, batch, data_cpus), args.warmup, args.steps)
            except Exception as e:  # report the synthetic figures even when the data path fails
                print(f"{name}: the Ray Data-fed measurement failed: {type(e).__name__}: {e}", flush=True)
            else:
                rows.append(_row(name, f"Ray Data pipeline ({data_cpus} CPU actors)", batch, r, flops))
                print(rows[-1], flush=True)
        del step, model
        torch.cuda.empty_cache()
    print("\n| model | feed | batch | samples/s | TFLOP/s | MFU @989 | MFU @790 | blocked on data |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


def _write_parquet(rows: int, copies: int = 1) -> str:
    import shutil
    from pathlib import Path

    import ray

    from clipray.data.synth import write_synthetic

    out = tempfile.mkdtemp(prefix="clipray-bench-gpu-")
    started = time.perf_counter()
    write_synthetic(out, rows, shards=16, seed=0, image_size=224, eval_per_class=1)
    shards = sorted(Path(out, "train").glob("*.parquet"))
    for c in range(1, copies):
        for f in shards:
            shutil.copy(f, f.with_name(f"copy{c:03d}-{f.name}"))
    print(f"wrote {rows} synthetic rows at 224-336 px in {time.perf_counter() - started:.0f} s, "
          f"repeated {copies}x on disk ({rows * copies} rows per pass)", flush=True)
    if not ray.is_initialized():
        from clipray.runtime import start_local_ray

        start_local_ray(include_dashboard=False, logging_level="warning")
    return os.path.join(out, "train")


bench_registry.register("gpu")(Benchmark(help="CLIP B/32 and B/16 on a CUDA GPU: samples/s and MFU, synthetic "
                                              "and Ray Data-fed", add_arguments=add_arguments, run=run))
