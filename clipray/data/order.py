"""Deterministic data order and exact mid-epoch resume on Ray 2.60.

Ray 2.60 cannot resume a dataset iterator mid-epoch (ray#37633), and a Ray Train restart runs
the train function again from the top. clipray therefore owns the order itself:

* The driver lists the parquet files once (`list_files`) and hands the list to the workers.
* `EpochPlan` permutes the files with a seed derived from (seed, epoch) and cuts the permutation
  into chunks of `data.chunk_files` files. The plan is a pure function of its inputs, so every
  worker, and every restart, computes the same chunks.
* Inside the workers, each chunk becomes its own Ray Dataset (`build_dataset(files=...)`), built
  by rank 0, `streaming_split` into one equal shard per worker and broadcast over the process
  group. A dataset passed to `TorchTrainer` is fixed at `fit()` and restarts from its epoch start,
  so it cannot express "the rest of this epoch"; a per-chunk dataset can.
* `DataCursor` is what a checkpoint records: epoch, chunk, the keys every worker has consumed
  from that chunk (gathered from all ranks), and the seeds. On restart, the chunk is rebuilt
  without those keys and the following chunks follow in plan order, so no sample is skipped and
  none is repeated except those consumed after the last checkpoint. The world size may change
  between attempts (elastic runs): the cursor is a set of keys, not per-rank offsets.

Within a chunk, row order depends on Ray Data's parallel execution; the set of rows per chunk is
exact. Rows left at a chunk's end (fewer than one batch per worker) are dropped, as `drop_last`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clipray.data.ops.filters import Claims


def list_files(source: str, endpoint_url: str | None = None, *,
               partition_filter: dict | None = None) -> list[str]:
    """Sorted parquet files under `source` (directory, glob or s3:// prefix), as Ray Data reads them."""
    from clipray.data.sources import resolve

    return resolve(source, endpoint_url, partition_filter=partition_filter).files


def epoch_seed(seed: int, epoch: int) -> int:
    """A stable 63-bit seed for (seed, epoch); independent of PYTHONHASHSEED."""
    digest = hashlib.sha256(f"clipray-order:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class EpochPlan:
    """The seeded per-epoch file order, cut into chunks."""

    files: tuple[str, ...]
    seed: int
    chunk_files: int | None = None

    def order(self, epoch: int) -> list[str]:
        files = sorted(self.files)
        random.Random(epoch_seed(self.seed, epoch)).shuffle(files)
        return files

    def chunks(self, epoch: int) -> list[list[str]]:
        files = self.order(epoch)
        size = self.chunk_files or len(files) or 1
        return [files[i : i + size] for i in range(0, len(files), size)]


@dataclass
class DataCursor:
    """Where training is in the data: enough to rebuild the rest of the epoch exactly."""

    epoch: int = 0
    chunk: int = 0
    consumed: list[str] = field(default_factory=list)  # keys taken from this chunk, all workers
    # The duplicate index's entries of those keys (file -> image hash -> key): the resumed chunk
    # skips the rows, and still drops their duplicates (`DedupIndex.claims_of`).
    claims: Claims = field(default_factory=dict)
    seed: int = 0
    chunk_seed: int = 0  # local shuffle seed of this chunk

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DataCursor | None:
        return cls(**d) if d else None


def merge_consumed(per_rank: Iterable[Collection[str]]) -> list[str]:
    """The union of every worker's consumed keys; keys are unique within an epoch."""
    out: set[str] = set()
    for keys in per_rank:
        out.update(keys)
    return sorted(out)


def chunk_shuffle_seed(seed: int, epoch: int, chunk: int) -> int:
    return epoch_seed(seed, epoch * 1_000_003 + chunk) % (2**31)
