"""Row and drop counts of the CPU stages, summed over every actor of a pipeline run."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any


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

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def stats_actor(name: str | None = None) -> Any:
    """A Ray actor holding a `PipelineStats`; cheap (no CPU reserved).

    It lives on the caller's node (the driver's, in a training run): the counts must outlive the
    loss of any other node, which an elastic run survives. The affinity is hard: a soft one let
    Ray place it on another node even with the driver's node alive.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    cls = ray.remote(num_cpus=0, scheduling_strategy=here)(PipelineStats)
    return cls.options(name=name).remote() if name else cls.remote()
