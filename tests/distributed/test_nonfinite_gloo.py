"""The non-finite guard agrees over ranks (2 gloo processes): a NaN on rank 1 only skips the step
on rank 0 too, so no rank applies an update the other one skips."""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipray.train.guard import NonFiniteGuard
from clipray.train.parallel import close_process_group


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    guard = NonFiniteGuard(5, rank, world_size, torch.device("cpu"))
    decisions = []
    for step in (1, 2, 3):
        loss = torch.tensor(math.nan if (rank == 1 and step == 2) else 1.0)
        decisions.append(guard.ok({"loss": loss}, torch.tensor(0.5), step))
    torch.save({"decisions": decisions, "skipped": guard.skipped}, os.path.join(out_dir, f"rank{rank}.pt"))
    close_process_group()


def test_ranks_agree_on_skipping(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        assert out == {"decisions": [True, False, True], "skipped": 1}, (rank, out)
