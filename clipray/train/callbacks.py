"""Controller-side Ray Train callback: restarts and their causes go into the run's MLflow record.

`ray.train.UserCallback` runs once, in the Train controller (on the driver's node), and survives
worker-group restarts, so it is the one place that sees every restart:

- a worker-group failure that Ray Train retries (a killed worker, a lost node) arrives in
  `after_exception`;
- an elastic resize (more workers fit again, `train.num_workers: [min, max]`) raises nothing: the
  group is shut down and restarted at the new size, and shows as a change of `train/world_size`
  between two reports with no failure in between.

Each is logged as the metrics `train/restarts` (restarts so far, at the last reported step) and
`train/resumed_from_step` (the latest committed checkpoint, which the new group starts after), and
the tags `clipray.restart.<n>.cause` and `clipray.restart.<n>.after_step`.
"""

from __future__ import annotations

from typing import Any

from ray.train import UserCallback


class RestartTracker(UserCallback):
    """Counts worker-group restarts into MLflow (tracking URI and run id resolved by the driver)."""

    def __init__(self, tracking_uri: str, run_id: str, checkpoint_root: str, restarts: int = 0) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.checkpoint_root = checkpoint_root
        self.restarts = restarts  # so far (a resumed run counts its earlier ones)
        self.last_step = 0
        self.world_size: int | None = None  # at the last report
        self.failed_since_report = False

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        steps = [int(m["step"]) for m in metrics if m and "step" in m]
        if steps:
            self.last_step = max(steps)
        sizes = {int(m["train/world_size"]) for m in metrics if m and "train/world_size" in m}
        if len(sizes) == 1:
            size = sizes.pop()
            if self.world_size is not None and size != self.world_size and not self.failed_since_report:
                self._record(f"elastic resize: {self.world_size} -> {size} workers")
            self.world_size = size
        self.failed_since_report = False

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        self.failed_since_report = True
        self._record("; ".join(f"rank {rank}: {type(e).__name__}: {e}" for rank, e in sorted(worker_exceptions.items())))

    def _record(self, cause: str) -> None:
        from clipray.tracking import MlflowTracker
        from clipray.train.checkpoint import CheckpointStore

        self.restarts += 1
        # The group is down: no checkpoint commits before the new one starts from this one.
        resumed = CheckpointStore(self.checkpoint_root).latest() or 0
        tracker = MlflowTracker(self.tracking_uri, self.run_id)
        tracker.log_metrics({"train/restarts": float(self.restarts), "train/resumed_from_step": float(resumed)},
                            step=self.last_step)
        tracker.set_tags({f"clipray.restart.{self.restarts}.cause": cause[:4000],
                          f"clipray.restart.{self.restarts}.after_step": str(self.last_step)})
