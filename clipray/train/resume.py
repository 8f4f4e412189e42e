"""`clipray train PIPELINE --resume RUN_ID`: continue a run whose driver was lost.

The run's record says where its checkpoints are (tag `clipray.checkpoints`,
`<storage>/<name>/checkpoints`) and what it was trained with (its params, the flattened config).
A resume reopens that MLflow run, reuses the same Ray Train name and storage path, and the
workers resume from the latest committed checkpoint as after any restart (state, data cursor, LR
schedule). The pipeline given must be the one the run was started with, apart from the keys
below, which say where and how wide it runs rather than what it trains.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from clipray.config import PipelineConfig, to_dict
from clipray.config.load import ConfigError, flatten

# Keys that may differ across a resume: placement and capacity, not what is trained.
RESUMABLE_KEYS = frozenset({
    "ray.address", "ray.num_cpus",
    "train.num_workers", "train.cpus_per_worker", "train.resources_per_worker", "train.torch_threads",
    "train.elastic_resize_interval_s", "train.max_failures", "train.max_skipped_steps", "train.sample_log",
    "train.storage_path",  # the checkpoints are found through the run's tag, wherever this resolves
    "data.concurrency", "data.num_cpus",
    "tracking.tracking_uri",
})
CHECKPOINT_TAG = "clipray.checkpoints"


class ResumeError(ConfigError):
    """The run cannot be resumed with this pipeline (a one-line reason)."""


@dataclass
class ResumePoint:
    run_id: str
    checkpoint_root: str  # <storage>/<name>/checkpoints
    name: str  # the Ray Train run name
    storage: str  # the Ray Train storage path
    restarts: int  # train/restarts logged so far


def config_differences(config: PipelineConfig, recorded: dict[str, str]) -> list[str]:
    """Keys (outside RESUMABLE_KEYS) whose value differs from the run's recorded params.

    Only config keys are compared (the run's params also hold e.g. parameter counts); masked
    secrets are not, nor keys the record lacks (settings of a newer clipray). Relative paths are
    compared as absolute paths from the working directory.
    """
    from clipray.config.paths import PATH_KEYS, is_relative_path
    from clipray.tracking.tracker import MASK, _param_value, mask_secrets

    mine = {k: _param_value(v) for k, v in mask_secrets(flatten(to_dict(config))).items()}
    keys = (set(mine) & set(recorded)) - RESUMABLE_KEYS
    paths = {f"{section}.{key}" for section, key in PATH_KEYS}

    def same(key: str) -> bool:
        a, b = mine[key], recorded[key]
        if key in paths:  # a submitted job records its paths absolute; `clipray train` as given
            a, b = (os.path.abspath(v) if is_relative_path(v) else v for v in (a, b))
        return a == b

    return sorted(k for k in keys if recorded[k] != MASK and not same(k))


def resume_point(config: PipelineConfig, tracking_uri: str, run_id: str) -> ResumePoint:
    """Check that `run_id` can be resumed with `config`; where its checkpoints are."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ResumeError(f"--resume {run_id}: no such MLflow run at {tracking_uri}") from None
    root = run.data.tags.get(CHECKPOINT_TAG)
    if not root:
        raise ResumeError(f"--resume {run_id}: the run has no tag {CHECKPOINT_TAG} (it never reached training)")
    if run.info.status == "FINISHED":
        raise ResumeError(f"--resume {run_id}: the run is FINISHED already")
    diffs = config_differences(config, run.data.params)
    if diffs:
        shown = ", ".join(f"{k} ({run.data.params.get(k)!r} -> {_mine(config, k)!r})" for k in diffs[:10])
        raise ResumeError(f"--resume {run_id}: the pipeline differs from the run's recorded config in {shown}"
                          f"{' and more' if len(diffs) > 10 else ''}; only {', '.join(sorted(RESUMABLE_KEYS))} "
                          f"may change across a resume")
    parent, _, last = root.rstrip("/").rpartition("/")
    storage, _, name = parent.rpartition("/")
    if last != "checkpoints" or not name:
        raise ResumeError(f"--resume {run_id}: unexpected checkpoint location {root!r}")
    history = client.get_metric_history(run_id, "train/restarts")
    restarts = int(max((m.value for m in history), default=0))
    return ResumePoint(run_id, root, name, storage, restarts)


def _mine(config: PipelineConfig, key: str) -> Any:
    return flatten(to_dict(config)).get(key)
