"""`clipray bench loss`: peak memory and time of the contrastive loss on one worker.

For each world size W, W gloo processes on this machine each hold B rows of L2-normalised
features (dimension D) and run one forward + backward of the loss:

* softmax, sharded: `softmax_contrastive_loss` (local rows x all-gathered columns, B x W·B);
* softmax, naive: every worker gathers all features and scores the full W·B x W·B matrix
  (the "global loss" of open_clip without --local-loss);
* sigmoid, ring: `sigmoid_contrastive_loss` (B x B blocks, text passed around the ring);
* sigmoid, naive: all features gathered, full W·B x W·B sigmoid matrix.

Memory, two ways, over rank 0's first full-size forward + backward (after a warm-up pass on
16 rows per worker, so one-time costs are excluded):

* tensors: the peak bytes of tensor storage allocated during the pass and alive at once
  (`clipray.losses.memory.TensorMemory`: every op's outputs seen through a dispatch mode,
  freed storages subtracted). The worker's own input features are not counted; the gradients it accumulates are. This is
  exact and repeatable: it does not depend on the machine's load or on the allocator.
* RSS: the rise of the process's peak resident set (`ru_maxrss`) over the pass, which adds the
  allocator's and gloo's own buffers.

Time: median of `--repeats` further forward + backward passes.
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

    from clipray.losses.memory import TensorMemory
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
    scale.grad = bias.grad = None
    if world_size > 1:
        dist.barrier()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with TensorMemory([img, txt, scale, bias]) as tensors:
        fn(img, txt, scale, bias).backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for t in (img, txt, scale, bias):
        t.grad = None
    times = []
    for _ in range(repeats):
        if world_size > 1:
            dist.barrier()
        start = time.perf_counter()
        fn(img, txt, scale, bias).backward()
        times.append(time.perf_counter() - start)
    if rank == 0:
        out.put({"tensor_mib": tensors.peak / 2**20, "rss_mib": (peak - before) / 1024,
                 "time_s": statistics.median(times)})
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
    print("# rank 0, one forward+backward: tensors = peak live tensor storage (exact), "
          "RSS = rise of max RSS; time = median of further passes")
    print(f"{'loss':<8} {'W':>2} {'N':>6} | {'clipray tensors MiB':>19} {'RSS':>6} | "
          f"{'naive tensors MiB':>17} {'RSS':>6} | {'ratio':>5} | {'clipray s':>9} {'naive s':>8}")
    for kind, ours, naive in (("softmax", "softmax-sharded", "softmax-naive"),
                              ("sigmoid", "sigmoid-ring", "sigmoid-naive")):
        if kind not in args.losses.split(","):
            continue
        for w in sizes:
            a = measure(ours, w, args.batch, args.dim, args.repeats)
            b = measure(naive, w, args.batch, args.dim, args.repeats)
            ratio = a["tensor_mib"] / b["tensor_mib"] if b["tensor_mib"] > 0 else float("nan")
            print(f"{kind:<8} {w:>2} {w * args.batch:>6} | {a['tensor_mib']:>19.1f} {a['rss_mib']:>6.1f} | "
                  f"{b['tensor_mib']:>17.1f} {b['rss_mib']:>6.1f} | {ratio:>5.2f} | "
                  f"{a['time_s']:>9.3f} {b['time_s']:>8.3f}", flush=True)
    return 0


bench_registry.register("loss")(Benchmark(help="peak memory and time of the sharded losses vs the full matrix",
                                          add_arguments=add_arguments, run=run))
