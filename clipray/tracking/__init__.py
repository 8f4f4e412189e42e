"""Run tracking: one small protocol, MLflow on the process that owns the run, null elsewhere."""

from clipray.tracking.tracker import (
    MlflowTracker,
    NullTracker,
    Tracker,
    mask_secrets,
    resolve_tracking_uri,
    start_run,
)

__all__ = ["MlflowTracker", "NullTracker", "Tracker", "mask_secrets", "resolve_tracking_uri", "start_run"]
