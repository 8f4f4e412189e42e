"""What the preprocessing actors of a pipeline share: row and drop counts, summed over every
actor, and the index of duplicate images of each dataset execution, in one Ray actor."""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clipray.data.ops.filters import Claims, DedupIndex


class PipelineStats:
    """rows_in = rows_out + sum(dropped), by construction of `Preprocess`."""

    def __init__(self) -> None:
        self.rows_in = 0
        self.rows_out = 0
        self.dropped: Counter[str] = Counter()
        self.busy_s = 0.0  # summed over actors: CPU-stage time spent in the ops
        self.started = time.monotonic()

    def add(self, rows_in: int, rows_out: int, dropped: dict[str, int], busy_s: float) -> None:
        self.rows_in += rows_in
        self.rows_out += rows_out
        self.dropped.update(dropped)
        self.busy_s += busy_s

    def snapshot(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped": dict(sorted(self.dropped.items())),
            "busy_s": round(self.busy_s, 3),
            "elapsed_s": round(elapsed, 3),
        }


class PipelineState(PipelineStats):
    """`PipelineStats` plus one duplicate-image index per dataset execution (`open_dedup`).

    One actor holds both because each actor is a process to start, about a CPU-second on a small
    node, and training builds a Ray Dataset per chunk of files: the counts live for the whole run,
    a duplicate index only for its dataset (a hash and a key per row, about 200 bytes). The newest
    `KEEP` indexes are kept, which bounds the memory to that many chunks of rows; a claim on an
    older one is an error, not a silently different answer.
    """

    KEEP = 4  # datasets in flight at once; training has one, two while ranks finish a chunk

    def __init__(self) -> None:
        super().__init__()
        self.indexes: OrderedDict[int, DedupIndex] = OrderedDict()
        self.opened = 0

    def open_dedup(self, claims: Claims | None = None) -> int:
        """A new index, seeded with `claims` (`DedupIndex.claims_of` of a resumed chunk)."""
        from clipray.data.ops.filters import DedupIndex

        self.opened += 1
        self.indexes[self.opened] = DedupIndex(claims)
        while len(self.indexes) > self.KEEP:
            self.indexes.popitem(last=False)
        return self.opened

    def claim_many(self, index: int, groups: dict[str, tuple[list[bytes], list[str]]]) -> dict[str, list[bool]]:
        return self._index(index).claim_many(groups)

    def dedup_claims(self, index: int, keys: Collection[str]) -> Claims:
        return self._index(index).claims_of(keys)

    def _index(self, index: int) -> DedupIndex:
        try:
            return self.indexes[index]
        except KeyError:
            raise RuntimeError(
                f"duplicate index {index} was dropped: more than {self.KEEP} datasets of this pipeline "
                f"were built after it (it is index {index} of {self.opened}); iterate fewer at once") from None


@dataclass(frozen=True)
class SharedDedup:
    """One dataset's duplicate index inside a `PipelineState` actor (what `DedupImages` attaches)."""

    actor: Any
    index: int

    def claim_many(self, groups: dict[str, tuple[list[bytes], list[str]]]) -> dict[str, list[bool]]:
        import ray

        return ray.get(self.actor.claim_many.remote(self.index, groups))

    def claims_of(self, keys: Collection[str]) -> Claims:
        import ray

        return ray.get(self.actor.dedup_claims.remote(self.index, list(keys)))


def shared_dedup(state: Any = None, claims: Claims | None = None) -> SharedDedup:
    """A new duplicate index in `state` (a `stats_actor`), or in an actor of its own without one;
    `claims` seed it (a resumed chunk's, see `DedupIndex.claims_of`)."""
    import ray

    # An actor handle, as `state` is: Ray types calls of its methods only for @ray.method ones.
    actor: Any = state if state is not None else ray.remote(num_cpus=0)(PipelineState).remote()
    return SharedDedup(actor, ray.get(actor.open_dedup.remote(claims)))


def stats_actor(name: str | None = None) -> Any:
    """A Ray actor holding a `PipelineState`; cheap (no CPU reserved).

    It lives on the caller's node (the driver's, in a training run): the counts must outlive the
    loss of any other node, which an elastic run survives. The affinity is hard: a soft one let
    Ray place it on another node even with the driver's node alive.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    # Ray's overload of remote() omits NodeAffinitySchedulingStrategy, which its SchedulingStrategyT allows.
    cls = ray.remote(num_cpus=0, scheduling_strategy=here)(PipelineState)  # type: ignore[call-overload]
    return cls.options(name=name).remote() if name else cls.remote()
