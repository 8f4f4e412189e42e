"""TrainContext: what the training loop may know about where it runs.

`RayTrainContext` implements it inside Ray Train workers; `LocalContext` runs the same loop
in one process (unit tests, single-process baselines). The loop never imports `ray.train`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

Batch = dict[str, torch.Tensor]
STATE_FILE = "state.pt"


class TrainContext(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def batches(self, epoch: int) -> Iterable[Batch]:
        """This worker's batches for one epoch (uint8 images, int tokens)."""
        ...

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        """Collective: every rank calls it together; rank 0 passes the state to checkpoint."""
        ...

    def latest_state(self) -> dict[str, Any] | None:
        """The state of the latest complete checkpoint, or None on a fresh start."""
        ...


def save_state(state: dict[str, Any], directory: str | os.PathLike[str]) -> Path:
    """Write atomically: a crash mid-write leaves no file under the final name."""
    path = Path(directory) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)


class LocalContext:
    """Single process, world size 1; checkpoints in a local directory."""

    rank = 0
    world_size = 1

    def __init__(self, batches: Callable[[int], Iterable[Batch]], checkpoint_dir: str | None = None,
                 device: str = "cpu") -> None:
        self._batches = batches
        self.device = torch.device(device)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.reports: list[dict[str, float]] = []

    def batches(self, epoch: int) -> Iterable[Batch]:
        return self._batches(epoch)

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        self.reports.append(dict(metrics))
        if state is not None and self.checkpoint_dir is not None:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            save_state(state, self.checkpoint_dir)

    def latest_state(self) -> dict[str, Any] | None:
        if self.checkpoint_dir and (self.checkpoint_dir / STATE_FILE).exists():
            return load_state(self.checkpoint_dir)
        return None


class RayTrainContext:
    """Inside a Ray Train worker: dataset shard, device and checkpoints from `ray.train`."""

    def __init__(self, *, batch_size: int, local_shuffle_buffer: int = 0, seed: int = 0) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.batch_size = batch_size
        self.local_shuffle_buffer = local_shuffle_buffer
        self.seed = seed
        self._shard = ray.train.get_dataset_shard("train")

    def batches(self, epoch: int) -> Iterator[Batch]:
        from clipray.train.collate import TrainCollate

        # A fresh iterator per epoch: Ray Data iterators are single-use.
        return iter(self._shard.iter_torch_batches(
            batch_size=self.batch_size,
            drop_last=True,  # equal step counts on every rank, or collectives deadlock
            local_shuffle_buffer_size=self.local_shuffle_buffer or None,
            local_shuffle_seed=(self.seed + epoch) if self.local_shuffle_buffer else None,
            collate_fn=TrainCollate(),  # tensors move to the device in the objective
            prefetch_batches=2,
        ))

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        import ray.train

        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="clipray-ckpt-") as tmp:
            save_state(state, tmp)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def latest_state(self) -> dict[str, Any] | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            return load_state(d)
