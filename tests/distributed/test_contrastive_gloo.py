"""Sharded losses over W gloo processes equal the single-process full-batch loss.

Each rank holds B rows; the full batch is their concatenation. The mean of the per-rank losses
must equal the full-batch loss, and each rank's feature gradients (divided by W, which undoes the
sum over every rank's loss terms that the gather's reduce-scatter or the ring's backward
produces) must equal the full-batch gradients of its rows. Temperature and bias gradients are
averaged over ranks, as DDP does.

One spawn per world size serves every test here (a module fixture): fp64 exactness, the same
under bf16 autocast, and the ring sigmoid loss's memory.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from clipray.losses import (
    naive_sigmoid_loss,
    naive_softmax_loss,
    sigmoid_contrastive_loss,
    softmax_contrastive_loss,
)
from clipray.losses.memory import TensorMemory
from clipray.train.parallel import close_process_group
from tests.unit.test_loss_bf16 import BF16_ROUNDING, clustered_features

B, D = 8, 16
TOL = 1e-5
BF16_B, BF16_D, BF16_SCALE = 64, 64, 100.0  # per rank; clustered features at CLIP's largest scale
MEM_B, MEM_D = 32, 4096  # B x D chunks dwarf the B x B blocks, so chunk counts are visible
KINDS = ("softmax", "sigmoid")


def full_batch(world_size: int):
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(world_size * B, D, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(world_size * B, D, generator=g, dtype=torch.float64), dim=-1)
    return img, txt, torch.tensor(7.5, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)


def bf16_full_batch(world_size: int):
    """What CPU autocast hands the loss: bf16 features; fp32 scale and bias parameters."""
    img, txt = clustered_features(world_size * BF16_B, BF16_D)
    return (img.bfloat16(), txt.bfloat16(), torch.tensor(BF16_SCALE), torch.tensor(-10.0))


def compute(kind: str, img, txt, scale, bias, rank: int, world_size: int, sharded: bool):
    if kind == "softmax" and sharded:
        return softmax_contrastive_loss(img, txt, scale, rank=rank, world_size=world_size)
    if kind == "softmax":
        return naive_softmax_loss(img, txt, scale)  # plain autograd over the full N x N matrix
    if sharded:
        return sigmoid_contrastive_loss(img, txt, scale, bias, rank=rank, world_size=world_size)
    return naive_sigmoid_loss(img, txt, scale, bias)


def run(kind: str, batch, rank: int, world_size: int, rows: int, sharded: bool,
        autocast: bool = False) -> dict[str, torch.Tensor]:
    """Loss and gradients of `rows` rows per rank (rank's own rows when sharded, all otherwise)."""
    img, txt, scale, bias = batch
    if sharded:
        img, txt = img[rank * rows : (rank + 1) * rows], txt[rank * rows : (rank + 1) * rows]
    leaves = [t.clone().requires_grad_(True) for t in (img, txt, scale, bias)]
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        loss = compute(kind, *leaves, rank, world_size, sharded)
    loss.backward()
    grads = [t.grad for t in leaves]
    return {"loss": loss.detach(), "img_grad": grads[0], "txt_grad": grads[1], "scale_grad": grads[2],
            "bias_grad": grads[3]}


def ring_memory(rank: int, world_size: int) -> dict[str, int]:
    """Peak bytes of tensors the ring sigmoid loss allocates, forward and forward + backward."""
    g = torch.Generator().manual_seed(rank)
    img = F.normalize(torch.randn(MEM_B, MEM_D, generator=g), dim=-1).requires_grad_(True)
    txt = F.normalize(torch.randn(MEM_B, MEM_D, generator=g), dim=-1).requires_grad_(True)
    scale, bias = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    with TensorMemory([img, txt, scale, bias]) as mem:
        loss = sigmoid_contrastive_loss(img, txt, scale, bias, rank=rank, world_size=world_size)
        forward_peak, kept = mem.peak, mem.live
        loss.backward()
    return {"forward_peak": forward_peak, "kept_for_backward": kept, "peak": mem.peak}


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    out: dict[str, Any] = {}
    for kind in KINDS:
        out[kind] = run(kind, full_batch(world_size), rank, world_size, B, sharded=True)
        out[f"{kind}-bf16"] = run(kind, bf16_full_batch(world_size), rank, world_size, BF16_B, sharded=True,
                                  autocast=True)
    out["ring_memory"] = ring_memory(rank, world_size)
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    close_process_group()


@pytest.fixture(scope="module", params=[1, 2, 4], ids=lambda w: f"W{w}")
def ranks(request, tmp_path_factory) -> tuple[int, list[dict[str, Any]]]:
    world_size = request.param
    tmp: Path = tmp_path_factory.mktemp(f"gloo-w{world_size}")
    mp.spawn(_worker, args=(world_size, str(tmp / "init"), str(tmp)), nprocs=world_size, join=True)
    return world_size, [torch.load(tmp / f"rank{r}.pt") for r in range(world_size)]


def gathered(results: list[dict[str, torch.Tensor]], world_size: int) -> dict[str, torch.Tensor]:
    """What the ranks' results amount to for the full batch (see the module docstring)."""
    out = {"loss": sum(r["loss"] for r in results) / world_size,
           "img_grad": torch.cat([r["img_grad"] for r in results]) / world_size,
           "txt_grad": torch.cat([r["txt_grad"] for r in results]) / world_size,
           "scale_grad": sum(r["scale_grad"] for r in results) / world_size}
    if results[0]["bias_grad"] is not None:  # the sigmoid loss's bias
        out["bias_grad"] = sum(r["bias_grad"] for r in results) / world_size
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_sharded_loss_equals_full_batch(ranks, kind):
    world_size, results = ranks
    got = gathered([r[kind] for r in results], world_size)
    ref = run(kind, full_batch(world_size), 0, 1, world_size * B, sharded=False)

    assert torch.allclose(got["loss"], ref["loss"], rtol=0, atol=TOL), (got["loss"], ref["loss"])
    assert torch.allclose(got["img_grad"], ref["img_grad"], rtol=0, atol=TOL)
    assert torch.allclose(got["txt_grad"], ref["txt_grad"], rtol=0, atol=TOL)
    assert got["txt_grad"].abs().max() > 1e-3  # gradients really flowed (not all zero)
    assert torch.allclose(got["scale_grad"], ref["scale_grad"], rtol=0, atol=TOL)
    if kind == "sigmoid":
        assert torch.allclose(got["bias_grad"], ref["bias_grad"], rtol=0, atol=TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_sharded_loss_matches_one_process(ranks, kind):
    """Under bf16 autocast the W-worker loss and gradients equal one process's (both computed in
    fp32; the feature gradients come back in bf16, so may differ by one bf16 rounding) and are
    as accurate against fp64 as one process's."""
    world_size, results = ranks
    got = gathered([r[f"{kind}-bf16"] for r in results], world_size)
    batch = bf16_full_batch(world_size)
    one = run(kind, batch, 0, 1, world_size * BF16_B, sharded=True, autocast=True)
    ref = run(kind, tuple(t.double() for t in batch), 0, 1, world_size * BF16_B, sharded=False)

    assert got["loss"].dtype == torch.float32 and got["img_grad"].dtype == torch.bfloat16
    assert torch.allclose(got["loss"], one["loss"], rtol=1e-5, atol=0)
    for name in ("img_grad", "txt_grad"):
        assert torch.allclose(got[name].float(), one[name].float(), rtol=2 * BF16_ROUNDING, atol=1e-7), name
        error = float((got[name].double() - ref[name]).norm() / ref[name].norm())
        assert error <= BF16_ROUNDING, (name, error)
    names = ("scale_grad", "bias_grad") if kind == "sigmoid" else ("scale_grad",)
    for name in names:
        assert torch.allclose(got[name], one[name], rtol=1e-5, atol=1e-7), name
        # fp32 rounding of a sum of terms that nearly cancel (the gradient is small here)
        assert abs(float(got[name].double() - ref[name])) <= 1e-5 * abs(float(ref[name])) + 1e-6, name


def test_ring_sigmoid_memory_independent_of_world_size(ranks):
    """The ring loss keeps nothing for backward but its inputs, and allocates at most 2 B x D
    text chunks in forward and 5 B x D tensors in forward + backward at any W (module docstring
    of clipray.losses.sigmoid), not the N x D of all features that it once kept."""
    _, results = ranks
    chunk = MEM_B * MEM_D * 4
    blocks = 4 * MEM_B * MEM_B * 4  # a few B x B logit blocks and scalars: under 1% of a chunk
    for r in results:
        mem = r["ring_memory"]
        assert mem["kept_for_backward"] <= 1024, mem
        assert mem["forward_peak"] <= 2 * chunk + blocks, (mem, chunk)
        assert mem["peak"] <= 5 * chunk + blocks, (mem, chunk)
        # The 2 gradients returned (image, text) are the least a backward can allocate.
        assert mem["peak"] >= 2 * chunk
