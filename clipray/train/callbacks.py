"""Controller-side Ray Train callback: restarts and their causes go into the run's MLflow record.

`ray.train.UserCallback` runs once, in the Train controller (on the driver's node), and survives
worker-group restarts, so it is the one place that sees every failure. Each worker-group failure
that Ray Train retries is logged as the metric `train/restarts` (restarts so far, at the last
reported step) and the tag `clipray.restart.<n>.cause`.
"""

from __future__ import annotations

from typing import Any

from ray.train import UserCallback


class RestartTracker(UserCallback):
    """Counts worker-group failures into MLflow (tracking URI and run id resolved by the driver)."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.restarts = 0
        self.last_step = 0

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        steps = [int(m["step"]) for m in metrics if m and "step" in m]
        if steps:
            self.last_step = max(steps)

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        from clipray.tracking import MlflowTracker

        self.restarts += 1
        cause = "; ".join(f"rank {rank}: {type(e).__name__}: {e}" for rank, e in sorted(worker_exceptions.items()))
        tracker = MlflowTracker(self.tracking_uri, self.run_id)
        tracker.log_metrics({"train/restarts": float(self.restarts)}, step=self.last_step)
        tracker.set_tags({f"clipray.restart.{self.restarts}.cause": cause[:4000],
                          f"clipray.restart.{self.restarts}.after_step": str(self.last_step)})
