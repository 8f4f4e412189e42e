"""Gradient caching is exact: 8 micro-batches give the full-batch gradient, alone and under DDP.

The objective is the real `ContrastiveObjective` (tiny CLIP towers); the reference is one process
holding the whole batch with micro_batches=1. Gradients of every parameter must agree within 1e-5.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipray.config import load_config
from clipray.train.objectives import ContrastiveObjective
from clipray.train.parallel import close_process_group

TOL = 1e-5
N = 32  # full batch

TINY = {"name": "t", "model": {"embed_dim": 16, "vision": {"image_size": 16, "patch_size": 8, "width": 16,
                                                           "layers": 1, "heads": 2},
                               "text": {"context_length": 8, "vocab_size": 64, "width": 16, "layers": 1,
                                        "heads": 2}},
        "train": {"global_batch_size": N, "num_workers": 1}}


def config(loss: str, micro: int, world_size: int = 1, parallel: str = "ddp"):
    extra = ["model.init_logit_bias=-10", "model.init_logit_scale=10"] if loss == "sigmoid" else []
    return load_config(data=copy.deepcopy(TINY), overrides=[f"train.loss={loss}", f"train.micro_batches={micro}",
                                             f"train.num_workers={world_size}", f"train.parallel={parallel}", *extra])


def full_batch():
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randint(0, 256, (N, 16, 16, 3), generator=g, dtype=torch.uint8),
            "tokens": torch.randint(1, 64, (N, 8), generator=g, dtype=torch.int32)}


def grads(loss: str, micro: int, rank: int = 0, world_size: int = 1,
          parallel: str = "ddp") -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    obj = ContrastiveObjective(config(loss, micro, world_size, parallel), rank=rank, world_size=world_size,
                               device=torch.device("cpu"))
    batch = full_batch()
    per = N // world_size
    local = {k: v[rank * per : (rank + 1) * per] for k, v in batch.items()}
    losses, _ = obj.forward_backward(local)
    # FSDP2 grads are sharded DTensors: full_tensor() gathers them (a collective, same order on all ranks).
    out = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
           for n, p in obj.module.named_parameters()}
    return float(losses["loss"].detach()), out


def assert_same(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert got.keys() == ref.keys()
    for name in ref:
        diff = (got[name] - ref[name]).abs().max().item()
        assert diff <= TOL, f"{name}: max |diff| {diff:.2e} > {TOL}"
    assert max(g.abs().max().item() for g in ref.values()) > 1e-3  # gradients are not trivially zero


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_eight_micro_batches_equal_full_batch(loss):
    ref_loss, ref = grads(loss, 1)
    got_loss, got = grads(loss, 8)
    assert abs(got_loss - ref_loss) <= TOL
    assert_same(got, ref)


def _worker(rank: int, world_size: int, loss: str, init_file: str, out_dir: str, parallel: str = "ddp",
            micro: int = 4) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    value, g = grads(loss, micro, rank, world_size, parallel)
    value_t = torch.tensor([value])
    dist.all_reduce(value_t)
    if rank == 0:
        torch.save({"loss": float(value_t) / world_size, "grads": g}, os.path.join(out_dir, "out.pt"))
    close_process_group()


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_ddp_with_gradient_caching_equals_full_batch(tmp_path, loss):
    """2 gloo ranks x 4 micro-batches each (DDP no_sync on the first three) = one 32-row batch."""
    world_size = 2
    mp.spawn(_worker, args=(world_size, loss, str(tmp_path / "init"), str(tmp_path)), nprocs=world_size, join=True)
    out = torch.load(tmp_path / "out.pt")
    ref_loss, ref = grads(loss, 1)
    assert abs(out["loss"] - ref_loss) <= TOL
    assert_same(out["grads"], ref)


@pytest.mark.parametrize("micro", [1, 2])
def test_fsdp2_on_gloo_equals_full_batch(tmp_path, micro):
    """train.parallel=fsdp (fully_shard of the towers) on 2 CPU ranks gives the full-batch gradient."""
    world_size = 2
    mp.spawn(_worker, args=(world_size, "softmax", str(tmp_path / "init"), str(tmp_path), "fsdp", micro),
             nprocs=world_size, join=True)
    out = torch.load(tmp_path / "out.pt")
    ref_loss, ref = grads("softmax", 1)
    assert abs(out["loss"] - ref_loss) <= TOL
    assert_same(out["grads"], ref)
