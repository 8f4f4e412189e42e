"""Gradient-norm clipping sees the global norm under DDP and FSDP2 (2 gloo ranks): the norm and
the clipped gradients equal those of one process holding the whole batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipray.train.objectives import ContrastiveObjective
from clipray.train.parallel import clip_grad_norm, close_process_group
from tests.distributed.test_gradcache_gloo import TOL, N, assert_same, config, full_batch

MAX_NORM = 0.05  # below the tiny model's gradient norm, so the gradients are scaled


def clipped(rank: int = 0, world_size: int = 1, parallel: str = "ddp") -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    obj = ContrastiveObjective(config("softmax", 1, world_size, parallel), rank=rank, world_size=world_size,
                               device=torch.device("cpu"))
    per = N // world_size
    obj.forward_backward({k: v[rank * per : (rank + 1) * per] for k, v in full_batch().items()})
    norm = float(clip_grad_norm(obj.parameters(), MAX_NORM))
    # FSDP2 grads are sharded DTensors: full_tensor() gathers them (same order on every rank).
    return norm, {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
                  for n, p in obj.module.named_parameters()}


def _worker(rank: int, world_size: int, parallel: str, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    norm, grads = clipped(rank, world_size, parallel)
    if rank == 0:
        torch.save({"norm": norm, "grads": grads}, os.path.join(out_dir, "out.pt"))
    close_process_group()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_clipping_uses_the_global_norm(tmp_path, parallel):
    mp.spawn(_worker, args=(2, parallel, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    out = torch.load(tmp_path / "out.pt")
    ref_norm, ref = clipped()
    assert ref_norm > 2 * MAX_NORM  # clipping really scaled the gradients
    assert abs(out["norm"] - ref_norm) <= TOL * ref_norm
    clipped_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in ref.values()]))
    assert abs(float(clipped_norm) - MAX_NORM) < 1e-3 * MAX_NORM
    assert_same(out["grads"], ref)
