"""`clipray bench loss`: peak memory and time of the contrastive loss on one worker.

For each world size W, W gloo processes on this machine each hold B rows of L2-normalised
features (dimension D) and run one forward + backward of the loss:

* softmax, sharded: `softmax_contrastive_loss` (local rows x all-gathered columns, B x W·B);
* softmax, naive: every worker gathers all features and scores the full W·B x W·B matrix
  (the "global loss" of open_clip without --local-loss);
* sigmoid, ring: `sigmoid_contrastive_loss` (B x B blocks, text passed around the ring);
* sigmoid, naive: all features gathered, full W·B x W·B sigmoid matrix.

Memory method: each configuration runs in fresh processes; after a warm-up pass on 16 rows per
worker (so one-time costs are excluded), rank 0 reads its peak resident set
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`), runs the first full-size forward + backward and
reads it again; the difference is the loss's peak working memory (logits, softmax,
gathered features, gradients). Time: median of `--repeats` further forward + backward passes.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time
from typing import Any

from clipray.bench import Benchmark, bench_registry

VARIANTS = ("softmax-sharded", "softmax-naive", "sigmoid-ring", "sigmoid-naive")


def _loss_fn(variant: str, rank: int, world_size: int) -> Any:
    import torch

    from clipray.losses import (
        gather_with_grad,
        naive_sigmoid_loss,
        naive_softmax_loss,
        sigmoid_contrastive_loss,
        softmax_contrastive_loss,
    )

    def fn(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if variant == "softmax-sharded":
            return softmax_contrastive_loss(img, txt, scale, rank=rank, world_size=world_size)
        if variant == "sigmoid-ring":
            return sigmoid_contrastive_loss(img, txt, scale, bias, rank=rank, world_size=world_size)
        all_img, all_txt = gather_with_grad(img, world_size), gather_with_grad(txt, world_size)
        if variant == "softmax-naive":
            return naive_softmax_loss(all_img, all_txt, scale)
        return naive_sigmoid_loss(all_img, all_txt, scale, bias)

    return fn


def _worker(rank: int, world_size: int, variant: str, batch: int, dim: int, repeats: int,
            init_file: str, out: Any) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from clipray.train.parallel import close_process_group

    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    g = torch.Generator().manual_seed(rank)
    img = F.normalize(torch.randn(batch, dim, generator=g), dim=-1).requires_grad_(True)
    txt = F.normalize(torch.randn(batch, dim, generator=g), dim=-1).requires_grad_(True)
    scale = torch.tensor(10.0, requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    fn = _loss_fn(variant, rank, world_size)
    # Warm up on a few rows: one-time costs (autograd threads, gloo buffers) are not the loss's.
    small = [t[:16].detach().clone().requires_grad_(True) for t in (img, txt)]
    fn(small[0], small[1], scale, bias).backward()
    if world_size > 1:
        dist.barrier()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn(img, txt, scale, bias).backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        if world_size > 1:
            dist.barrier()
        start = time.perf_counter()
        fn(img, txt, scale, bias).backward()
        times.append(time.perf_counter() - start)
    if rank == 0:
        out.put({"peak_mib": (peak - before) / 1024, "time_s": statistics.median(times)})
    if world_size > 1:
        close_process_group()


def measure(variant: str, world_size: int, batch: int, dim: int, repeats: int) -> dict[str, float]:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_worker, args=(r, world_size, variant, batch, dim, repeats,
                                                    os.path.join(tmp, "init"), out)) for r in range(world_size)]
        for p in procs:
            p.start()
        result = out.get(timeout=600)
        for p in procs:
            p.join()
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=1024, help="rows per worker (B)")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension (D)")
    parser.add_argument("--world-sizes", default="1,2,4", help="comma-separated W values")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes after the measured one")
    parser.add_argument("--losses", default="softmax,sigmoid", help="comma-separated: softmax, sigmoid")


def run(args: argparse.Namespace) -> int:
    sizes = [int(w) for w in args.world_sizes.split(",")]
    print(f"# clipray bench loss: B={args.batch} per worker, D={args.dim}, fp32, gloo on CPU, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    print("# peak = rise of rank 0's max RSS over one forward+backward; time = median of further passes")
    print(f"{'loss':<10} {'W':>2} {'N':>6} | {'clipray peak MiB':>16} {'naive peak MiB':>15} {'ratio':>6} | "
          f"{'clipray s':>9} {'naive s':>8}")
    for kind, ours, naive in (("softmax", "softmax-sharded", "softmax-naive"),
                              ("sigmoid", "sigmoid-ring", "sigmoid-naive")):
        if kind not in args.losses.split(","):
            continue
        for w in sizes:
            a = measure(ours, w, args.batch, args.dim, args.repeats)
            b = measure(naive, w, args.batch, args.dim, args.repeats)
            ratio = a["peak_mib"] / b["peak_mib"] if b["peak_mib"] > 0 else float("nan")
            print(f"{kind:<10} {w:>2} {w * args.batch:>6} | {a['peak_mib']:>16.1f} {b['peak_mib']:>15.1f} "
                  f"{ratio:>6.2f} | {a['time_s']:>9.3f} {b['time_s']:>8.3f}", flush=True)
    return 0


bench_registry.register("loss")(Benchmark(help="peak memory and time of the sharded losses vs the full matrix",
                                          add_arguments=add_arguments, run=run))
