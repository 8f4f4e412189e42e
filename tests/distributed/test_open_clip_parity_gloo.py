"""K AdamW steps of clipray's training loop on 2 gloo workers equal open_clip's on 2 workers.

The reference is open_clip_train's `train_one_epoch` under DDP with `--local-loss
--gather-with-grad` (tests/support/make_open_clip_step_golden.py); here each rank runs clipray's
real `train_loop` (DDP, sharded softmax loss, global-norm clipping, clamp) on its half of every
batch. The comparison is the one of tests/unit/test_open_clip_parity.py.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipray.models.checkpoint import read_state
from clipray.train.context import LocalContext
from clipray.train.loop import train_loop
from clipray.train.parallel import close_process_group
from tests.unit.test_open_clip_parity import (
    Recorder,
    compare,
    golden,
    open_clip_config,
    rank_batches,
    write_init,
)

WORLD_SIZE = 2


class RankContext(LocalContext):
    """LocalContext as one rank of a gloo group: only rank 0 writes the checkpoint."""

    def __init__(self, rank: int, world_size: int, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rank, self.world_size = rank, world_size


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    cfg = open_clip_config(world_size, os.path.join(out_dir, "init.pt"))
    rec = Recorder()
    ckpt = os.path.join(out_dir, "ckpt") if rank == 0 else None
    train_loop(cfg, RankContext(rank, world_size, rank_batches(rank, world_size), ckpt), rec)
    if rank == 0:
        torch.save(rec.steps, os.path.join(out_dir, "steps.pt"))
    close_process_group()


def test_k_steps_on_two_workers_equal_open_clip_train(tmp_path):
    g = golden()
    write_init(g, tmp_path / "init.pt")
    mp.spawn(_worker, args=(WORLD_SIZE, str(tmp_path / "pg"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    steps = torch.load(tmp_path / "steps.pt")
    final = read_state(str(tmp_path / "ckpt"))["objective"]["model"]
    assert all(s["train/world_size"] == WORLD_SIZE for s in steps.values())
    diffs = compare(g, WORLD_SIZE, steps, final)
    print(f"2 workers vs open_clip: max relative diff {diffs}")
