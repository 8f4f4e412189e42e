"""Sharded losses over W gloo processes equal the single-process full-batch loss.

Each rank holds B rows; the full batch is their concatenation. The mean of the per-rank losses
must equal the full-batch loss, and each rank's feature gradients (divided by W, which undoes the
sum over every rank's loss terms that the gather's reduce-scatter or the ring's backward
produces) must equal the full-batch gradients of its rows. Temperature and bias gradients are
averaged over ranks, as DDP does.
"""

from __future__ import annotations

import os

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
from clipray.train.parallel import close_process_group

B, D = 8, 16
TOL = 1e-5


def full_batch(world_size: int):
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(world_size * B, D, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(world_size * B, D, generator=g, dtype=torch.float64), dim=-1)
    return img, txt, torch.tensor(7.5, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)


def compute(kind: str, img, txt, scale, bias, rank: int, world_size: int, sharded: bool):
    if kind == "softmax" and sharded:
        return softmax_contrastive_loss(img, txt, scale, rank=rank, world_size=world_size)
    if kind == "softmax":
        return naive_softmax_loss(img, txt, scale)  # plain autograd over the full N x N matrix
    if sharded:
        return sigmoid_contrastive_loss(img, txt, scale, bias, rank=rank, world_size=world_size)
    return naive_sigmoid_loss(img, txt, scale, bias)


def _worker(rank: int, world_size: int, kind: str, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    img, txt, scale, bias = full_batch(world_size)
    local_img = img[rank * B : (rank + 1) * B].clone().requires_grad_(True)
    local_txt = txt[rank * B : (rank + 1) * B].clone().requires_grad_(True)
    local_scale = scale.clone().requires_grad_(True)
    local_bias = bias.clone().requires_grad_(True)
    loss = compute(kind, local_img, local_txt, local_scale, local_bias, rank, world_size, sharded=True)
    loss.backward()
    torch.save({"loss": loss.detach(), "img_grad": local_img.grad, "txt_grad": local_txt.grad,
                "scale_grad": local_scale.grad, "bias_grad": local_bias.grad},
               os.path.join(out_dir, f"rank{rank}.pt"))
    close_process_group()


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_sharded_loss_equals_full_batch(tmp_path, world_size, kind):
    mp.spawn(_worker, args=(world_size, kind, str(tmp_path / "init"), str(tmp_path)), nprocs=world_size, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]

    img, txt, scale, bias = (t.clone().requires_grad_(True) for t in full_batch(world_size))
    ref = compute(kind, img, txt, scale, bias, 0, 1, sharded=False)
    ref.backward()

    mean_loss = sum(r["loss"] for r in results) / world_size
    assert torch.allclose(mean_loss, ref.detach(), rtol=0, atol=TOL), (mean_loss, ref)
    got_img = torch.cat([r["img_grad"] for r in results]) / world_size
    got_txt = torch.cat([r["txt_grad"] for r in results]) / world_size
    assert torch.allclose(got_img, img.grad, rtol=0, atol=TOL)
    assert torch.allclose(got_txt, txt.grad, rtol=0, atol=TOL)
    assert got_txt.abs().max() > 1e-3  # gradients really flowed (not all zero)
    assert torch.allclose(sum(r["scale_grad"] for r in results) / world_size, scale.grad, rtol=0, atol=TOL)
    if kind == "sigmoid":
        assert torch.allclose(sum(r["bias_grad"] for r in results) / world_size, bias.grad, rtol=0, atol=TOL)
