"""Driver side of a training run: MLflow run, Ray cluster, TorchTrainer, final evaluation."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clipray.config import PipelineConfig, load_config, to_dict
from clipray.config.load import flatten
from clipray.models.summary import log_parameter_counts
from clipray.tracking import MlflowTracker, NullTracker, resolve_tracking_uri, start_run


@dataclass
class TrainResult:
    run_id: str
    tracking_uri: str
    experiment: str
    checkpoint_path: str | None
    metrics: dict[str, float]
    data: dict[str, Any]


def init_ray(config: PipelineConfig) -> None:
    """Connect to the cluster in ray.address / $RAY_ADDRESS, or start an embedded local one."""
    import ray

    if ray.is_initialized():
        return
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=config.ray.num_cpus or os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1",
                 configure_logging=True, logging_level="warning")


def storage_path(config: PipelineConfig) -> str:
    path = config.train.storage_path or "clipray_runs"
    return path if "://" in path else str(Path(path).resolve())


def log_config(tracker: MlflowTracker | NullTracker, config: PipelineConfig) -> None:
    """Flattened params (secrets masked) and the resolved config as `config.yaml`."""
    from clipray.tracking.tracker import mask_secrets

    params = flatten(to_dict(config))
    tracker.log_params(params)
    masked = mask_secrets(params)
    nested: dict[str, Any] = {}
    for key, value in masked.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(nested, sort_keys=False))
        tracker.log_artifact(str(path))
    if config.text.kind == "tokens" and Path(config.text.tokenizer).is_file():
        tracker.log_artifact(config.text.tokenizer, "tokenizer")  # a trained vocabulary travels with the run


def _worker_entry(loop_config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker; rank 0 logs into the driver's MLflow run."""
    import torch

    from clipray.train.context import RayTrainContext
    from clipray.train.loop import train_loop

    config = load_config(data=loop_config["config"])
    tc = config.train
    torch.set_num_threads(tc.torch_threads or max(1, int(tc.cpus_per_worker)))
    ctx = RayTrainContext(batch_size=config.per_worker_batch_size,
                          local_shuffle_buffer=config.data.local_shuffle_buffer, seed=tc.seed)
    tracker = MlflowTracker(loop_config["tracking_uri"], loop_config["run_id"]) if ctx.rank == 0 else NullTracker()
    train_loop(config, ctx, tracker)


def train(config: PipelineConfig) -> TrainResult:
    """Train `config` on Ray, log everything to one MLflow run, evaluate zero-shot at the end."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from clipray.data.pipeline import build_dataset, resolve_source
    from clipray.data.stats import stats_actor

    tracking_uri = resolve_tracking_uri(config.tracking.tracking_uri)
    experiment = config.tracking.experiment or config.name
    tags = {"clipray.pipeline": config.name, "clipray.family": config.model.family}
    if config.tracking.parent_run_id:
        tags["mlflow.parentRunId"] = config.tracking.parent_run_id  # MLflow's nesting tag
    tracker = start_run(experiment, tracking_uri, run_name=config.tracking.run_name, tags=tags)
    print(f"[clipray] MLflow run {tracker.run_id} in experiment {experiment!r} ({tracking_uri})", flush=True)
    status = "FAILED"
    try:
        log_config(tracker, config)
        source = resolve_source(config)  # S3 access and schemas checked before Ray starts
        log_parameter_counts(tracker, config.model)
        init_ray(config)
        stats = stats_actor()
        dataset = build_dataset(config, train=True, stats=stats, resolved=source)
        tc = config.train
        trainer = TorchTrainer(
            _worker_entry,
            train_loop_config={"config": _worker_config(config), "tracking_uri": tracking_uri,
                               "run_id": tracker.run_id},
            scaling_config=ray.train.ScalingConfig(
                num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker={"CPU": tc.cpus_per_worker}
            ),
            run_config=ray.train.RunConfig(
                name=f"{config.name}-{tracker.run_id[:8]}",
                storage_path=storage_path(config),
                failure_config=ray.train.FailureConfig(max_failures=tc.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=tc.keep_checkpoints),
            ),
            datasets={"train": dataset},
        )
        started = time.monotonic()
        result = trainer.fit()
        train_s = time.monotonic() - started
        data = ray.get(stats.snapshot.remote())
        metrics = data_metrics(data, train_s)
        checkpoint_path = result.checkpoint.path if result.checkpoint else None
        if checkpoint_path:  # where `clipray eval --model RUN_ID` finds the weights
            tracker.set_tags({"clipray.checkpoint": _checkpoint_uri(result.checkpoint)})
        if config.eval.zeroshot_source and result.checkpoint is not None:
            metrics.update(evaluate_checkpoint(config, result.checkpoint))
        tracker.log_metrics(metrics, step=tc.steps)
        status = "FINISHED"
        return TrainResult(tracker.run_id, tracking_uri, experiment, checkpoint_path, metrics, data)
    finally:
        tracker.close(status)


def _worker_config(config: PipelineConfig) -> dict[str, Any]:
    """The config for the workers, local evaluation paths made absolute (workers run in another cwd)."""
    raw = to_dict(config)
    for key in ("zeroshot_source", "classes_file"):
        value = raw["eval"].get(key)
        if value and "://" not in value:
            raw["eval"][key] = str(Path(value).resolve())
    return raw


def data_metrics(data: dict[str, Any], wall_s: float) -> dict[str, float]:
    out = {f"data/dropped/{reason}": float(n) for reason, n in data["dropped"].items()}
    out["data/rows_in"] = float(data["rows_in"])
    out["data/rows_out"] = float(data["rows_out"])
    out["data/rows_per_s"] = data["rows_in"] / wall_s if wall_s > 0 else 0.0
    # Throughput of the CPU stage itself: rows per second of op time, summed over its actors.
    busy = data.get("busy_s", 0.0)
    out["data/stage_rows_per_s"] = data["rows_in"] / busy if busy > 0 else 0.0
    return out


def _checkpoint_uri(checkpoint: Any) -> str:
    """Local path, or scheme://path when the checkpoint lives on a remote filesystem."""
    fs = getattr(checkpoint, "filesystem", None)
    scheme = fs.type_name if fs is not None else "local"
    return checkpoint.path if scheme == "local" else f"{scheme}://{checkpoint.path}"


def evaluate_checkpoint(config: PipelineConfig, checkpoint: Any) -> dict[str, float]:
    from clipray.eval.suite import evaluate_in_process
    from clipray.eval.zeroshot import load_zeroshot_task
    from clipray.models import build_model
    from clipray.train.context import load_state

    with checkpoint.as_directory() as d:
        state = load_state(d)
    model = build_model(config.model)
    model.load_state_dict(state["objective"]["model"])
    return evaluate_in_process(model, config, load_zeroshot_task(config))
