"""The sharded softmax loss over W gloo processes equals the single-process full-batch loss.

Each rank holds B rows; the full batch is their concatenation. The mean of the per-rank losses
must equal the full-batch loss, and each rank's feature gradients (divided by W, which undoes the
sum that the gather's reduce-scatter produces) must equal the full-batch gradients of its rows.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from clipray.losses import softmax_contrastive_loss

B, D = 8, 16


def full_batch(world_size: int):
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(world_size * B, D, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(world_size * B, D, generator=g, dtype=torch.float64), dim=-1)
    return img, txt, torch.tensor(7.5, dtype=torch.float64)


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    img, txt, scale = full_batch(world_size)
    local_img = img[rank * B : (rank + 1) * B].clone().requires_grad_(True)
    local_txt = txt[rank * B : (rank + 1) * B].clone().requires_grad_(True)
    local_scale = scale.clone().requires_grad_(True)
    loss = softmax_contrastive_loss(local_img, local_txt, local_scale, rank=rank, world_size=world_size)
    loss.backward()
    torch.save({"loss": loss.detach(), "img_grad": local_img.grad, "txt_grad": local_txt.grad,
                "scale_grad": local_scale.grad}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("world_size", [2])
def test_sharded_loss_equals_full_batch(tmp_path, world_size):
    mp.spawn(_worker, args=(world_size, str(tmp_path / "init"), str(tmp_path)), nprocs=world_size, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]

    img, txt, scale = full_batch(world_size)
    img.requires_grad_(True)
    txt.requires_grad_(True)
    scale.requires_grad_(True)
    ref = softmax_contrastive_loss(img, txt, scale)
    ref.backward()

    mean_loss = sum(r["loss"] for r in results) / world_size
    assert torch.allclose(mean_loss, ref.detach(), rtol=1e-10, atol=1e-12)
    got_img = torch.cat([r["img_grad"] for r in results]) / world_size
    got_txt = torch.cat([r["txt_grad"] for r in results]) / world_size
    assert torch.allclose(got_img, img.grad, rtol=1e-9, atol=1e-12)
    assert torch.allclose(got_txt, txt.grad, rtol=1e-9, atol=1e-12)
    # DDP averages the temperature's gradient over ranks.
    assert torch.allclose(sum(r["scale_grad"] for r in results) / world_size, scale.grad, rtol=1e-9)
