"""TrainContext: what the training loop may know about where it runs.

`RayTrainContext` implements it inside Ray Train workers; `LocalContext` runs the same loop
in one process (unit tests, single-process baselines). The loop never imports `ray.train`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from clipray.models.checkpoint import has_state, read_state, write_state

if TYPE_CHECKING:
    from clipray.config import PipelineConfig
    from clipray.data.ops.filters import Claims

Batch = dict[str, torch.Tensor]


class TrainContext(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def batches(self, epoch: int) -> Iterable[Batch]:
        """This worker's batches for one epoch (uint8 images, int tokens), from the data cursor on."""
        ...

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        """Collective: every rank calls it together; rank 0 passes the state to checkpoint."""
        ...

    def latest_state(self) -> dict[str, Any] | None:
        """The state of the latest complete checkpoint, or None on a fresh start."""
        ...

    def data_state(self) -> dict[str, Any] | None:
        """Collective: the data cursor (what every worker consumed) to store in a checkpoint."""
        ...

    def load_data_state(self, state: dict[str, Any] | None) -> None:
        """Resume the data from a checkpoint's cursor (before the first `batches` call)."""
        ...

    def preemption_notice(self) -> bool:
        """Collective: True once the cluster has said that a node of this group is going away."""
        ...


class LocalContext:
    """Single process, world size 1; the latest checkpoint in a local directory (`state.pt`)."""

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
            write_state(state, str(self.checkpoint_dir))

    def latest_state(self) -> dict[str, Any] | None:
        if self.checkpoint_dir and has_state(str(self.checkpoint_dir)):
            return read_state(str(self.checkpoint_dir))
        return None

    def data_state(self) -> dict[str, Any] | None:
        return None  # the batches callable owns its order; resume replays the epoch from its start

    def load_data_state(self, state: dict[str, Any] | None) -> None:
        pass

    def preemption_notice(self) -> bool:
        return False


class RayTrainContext:
    """Inside a Ray Train worker: per-chunk datasets, device, checkpoints in a `CheckpointStore`.

    The data follows `clipray.data.order`: the driver's file list, a seeded plan of chunks per
    epoch, one Ray Dataset per chunk split over the workers, and a cursor of consumed keys.
    Checkpoints go to the run's storage path through `CheckpointStore` (commit markers, keep K);
    `ray.train.report` stays the per-checkpoint barrier and carries the metrics to the controller.
    """

    def __init__(self, config: PipelineConfig, *, files: list[str], checkpoint_root: str,
                 stats: Any = None) -> None:
        import ray.train
        import ray.train.torch

        from clipray.data.order import EpochPlan
        from clipray.train.checkpoint import CheckpointStore

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.config = config
        self.batch_size = config.train.local_batch_size(self.world_size)
        d = config.data
        self.seed = d.shuffle_seed if d.shuffle_seed is not None else config.train.seed
        self.plan = EpochPlan(tuple(files), self.seed, d.chunk_files)
        self.store = CheckpointStore(checkpoint_root, config.train.keep_checkpoints)
        self.stats = stats
        self._chunk: tuple[int, int] = (0, 0)
        self._consumed: list[str] = []
        self._dedup: Any = None  # rank 0: the current chunk's duplicate index (a SharedDedup)
        self._resume: Any = None

    def batches(self, epoch: int) -> Iterator[Batch]:
        from clipray.data.order import chunk_shuffle_seed

        chunks = self.plan.chunks(epoch)
        first, skip, claims = 0, [], {}
        if self._resume is not None and self._resume.epoch == epoch:
            first, skip, claims = self._resume.chunk, self._resume.consumed, self._resume.claims
        self._resume = None
        for index in range(first, len(chunks)):
            resumed = index == first
            # A resumed chunk still counts what was consumed before the resume (rank 0 carries
            # it into the next cursor): a second restart in the same chunk must skip those too.
            carried = list(skip) if resumed and self.rank == 0 else []
            self._chunk, self._consumed = (epoch, index), carried
            shuffle_seed = chunk_shuffle_seed(self.seed, epoch, index)
            batches = self._chunk_batches(chunks[index], skip if resumed else [], claims if resumed else {},
                                          shuffle_seed)
            for batch in batches:
                self._consumed.extend(batch["key"])  # type: ignore[arg-type]
                yield batch
        self._chunk, self._consumed = (epoch, len(chunks)), []

    def _chunk_batches(self, files: list[str], skip: list[str], claims: Claims, shuffle_seed: int) -> Iterator[Batch]:
        """Rank 0 builds the chunk's dataset and splits it; every rank iterates its own shard."""
        import torch.distributed as dist

        from clipray.data.pipeline import build_dataset, open_dedup
        from clipray.train.collate import TrainCollate

        shards: list[Any] = [None]
        if self.rank == 0:
            self._dedup = open_dedup(self.config, self.stats, claims)
            ds = build_dataset(self.config, train=True, stats=self.stats, files=files, skip_keys=skip,
                               dedup=self._dedup)
            shards = [ds.streaming_split(self.world_size, equal=True)] if self.world_size > 1 else [[ds]]
        if self.world_size > 1:
            dist.broadcast_object_list(shards, src=0)
        shard = shards[0][self.rank]
        buffer = self.config.data.local_shuffle_buffer
        return iter(shard.iter_torch_batches(
            batch_size=self.batch_size,
            drop_last=True,  # equal step counts on every rank, or collectives deadlock
            local_shuffle_buffer_size=buffer or None,
            local_shuffle_seed=shuffle_seed if buffer else None,
            collate_fn=TrainCollate(),  # tensors move to the device in the objective
            prefetch_batches=2,
        ))

    def data_state(self) -> dict[str, Any] | None:
        import torch.distributed as dist

        from clipray.data.order import DataCursor, merge_consumed

        per_rank: list[Any] = [None] * self.world_size
        if self.world_size > 1:
            dist.all_gather_object(per_rank, self._consumed)
        else:
            per_rank = [self._consumed]
        epoch, chunk = self._chunk
        consumed = merge_consumed(per_rank)
        claims = self._dedup.claims_of(consumed) if self._dedup is not None and consumed else {}
        return DataCursor(epoch=epoch, chunk=chunk, consumed=consumed, claims=claims, seed=self.seed).to_dict()

    def load_data_state(self, state: dict[str, Any] | None) -> None:
        from clipray.data.order import DataCursor

        self._resume = DataCursor.from_dict(state)

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        import ray.train

        if state is not None:
            self.store.save(state, int(state["step"]))
        ray.train.report(metrics)  # a barrier: no rank runs ahead of a checkpoint being written

    def latest_state(self) -> dict[str, Any] | None:
        return self.store.load()

    def preemption_notice(self) -> bool:
        # Ray Train's preemption watcher sees a node drain (a spot notice through the autoscaler,
        # `ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION`); rank 0's view is broadcast.
        import ray.train

        return ray.train.get_preemption_info() is not None
