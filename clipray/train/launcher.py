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
from clipray.config.load import flatten, unflatten
from clipray.config.paths import with_absolute_paths
from clipray.models.summary import log_parameter_counts
from clipray.runtime import init_ray
from clipray.text.encoding import text_encoding
from clipray.tracking import MlflowTracker, NullTracker, resolve_tracking_uri, start_run
from clipray.tracking.runs import heartbeat
from clipray.train.faults import ENV as FAULT_ENV


@dataclass
class TrainResult:
    run_id: str
    tracking_uri: str
    experiment: str
    checkpoint_path: str | None
    metrics: dict[str, float]
    data: dict[str, Any]
    model_uri: str | None = None  # the logged pyfunc model
    model_name: str | None = None  # registered model and version
    model_version: str | None = None


def storage_path(config: PipelineConfig) -> str:
    path = config.train.storage_path or "clipray_runs"
    return path if "://" in path else str(Path(path).resolve())


def log_config(tracker: MlflowTracker | NullTracker, config: PipelineConfig) -> None:
    """Flattened params (secrets masked) and the resolved config as `config.yaml`."""
    from clipray.tracking.tracker import mask_secrets

    params = flatten(to_dict(config))
    tracker.log_params(params)
    nested = unflatten(mask_secrets(params))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(nested, sort_keys=False))
        tracker.log_artifact(str(path))
    vocabulary = text_encoding(config).vocabulary_file()
    if vocabulary is not None:
        tracker.log_artifact(vocabulary, "tokenizer")  # a trained vocabulary travels with the run


def _worker_entry(loop_config: dict[str, Any]) -> dict[str, str] | None:
    """Runs in every Ray Train worker; rank 0 logs into the driver's MLflow run."""
    import torch

    from clipray.tracking.spool import SpoolingTracker, TrackingOutage
    from clipray.train.context import RayTrainContext
    from clipray.train.guard import NonFiniteError
    from clipray.train.loop import train_loop

    config = load_config(data=loop_config["config"])
    tc = config.train
    torch.set_num_threads(tc.torch_threads or max(1, int(tc.cpus_per_worker)))
    ctx = RayTrainContext(config, files=loop_config["files"], checkpoint_root=loop_config["checkpoint_root"],
                          stats=loop_config.get("stats"))
    tracker: SpoolingTracker | NullTracker = NullTracker()
    if ctx.rank == 0:
        spool = config.tracking.spool_dir or os.path.join(tempfile.gettempdir(), "clipray-spool")
        tracker = SpoolingTracker(MlflowTracker(loop_config["tracking_uri"], loop_config["run_id"]), spool)
    try:
        train_loop(config, ctx, tracker, init_model=loop_config.get("init_model"))
        if isinstance(tracker, SpoolingTracker):
            tracker.close_spool(config.tracking.flush_timeout_s)
    except (NonFiniteError, TrackingOutage) as e:
        # Not worth a restart (every rank raises a NonFiniteError at the same step; an outage
        # comes after training). Raised from here, Ray Train would retry them as worker failures;
        # returned, they reach the driver (Result.return_value) as the run's error.
        return {"error": str(e), "type": type(e).__name__}
    return None


def train(config: PipelineConfig, *, init_model: dict[str, Any] | None = None,
          tags: dict[str, str] | None = None, version_tags: dict[str, str] | None = None,
          resume: str | None = None) -> TrainResult:
    """Train `config` on Ray, log everything to one MLflow run, evaluate zero-shot at the end.

    `resume`: the id of a run whose driver was lost; it continues from its latest committed
    checkpoint in the same MLflow run (`clipray.train.resume`).

    `init_model`: a model state dict to warm-start from (when no checkpoint of this run exists).
    `tags`: extra MLflow run tags; `version_tags`: tags of the registered model version.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from clipray.data.pipeline import preflight
    from clipray.data.stats import stats_actor
    from clipray.tracking.spool import TrackingOutage
    from clipray.train.callbacks import RestartTracker
    from clipray.train.checkpoint import CheckpointStore
    from clipray.train.guard import NonFiniteError
    from clipray.train.resume import resume_point

    tracking_uri = resolve_tracking_uri(config.tracking.tracking_uri)
    experiment = config.tracking.experiment or config.name
    run_tags = {"clipray.pipeline": config.name, "clipray.family": config.model.family, **(tags or {})}
    if config.tracking.parent_run_id:
        run_tags["mlflow.parentRunId"] = config.tracking.parent_run_id  # MLflow's nesting tag
    point = resume_point(config, tracking_uri, resume) if resume else None  # refused before anything runs
    if point is not None:
        tracker = MlflowTracker(tracking_uri, point.run_id)
        tracker.client.update_run(point.run_id, status="RUNNING")
    else:
        tracker = start_run(experiment, tracking_uri, run_name=config.tracking.run_name, tags=run_tags)
    print(f"[clipray] MLflow run {tracker.run_id} in experiment {experiment!r} ({tracking_uri})", flush=True)
    print(f"mlflow_run_id: {tracker.run_id}", flush=True)  # what `--resume` takes if this driver is lost
    status = "FAILED"
    beat = heartbeat(tracker)
    try:
        if point is None:
            log_config(tracker, config)
        source = preflight(config)  # S3 access, partitions, schemas and the ops' settings, before Ray starts
        if point is None:
            from clipray.data.curate.run import log_curated_source

            log_curated_source(tracker, config)  # curated data: its drops (eval_overlap, ...) as data/curated/*
            log_parameter_counts(tracker, config.model)
        init_ray(config, forward_env=(FAULT_ENV,))
        stats = stats_actor()
        tc = config.train
        # The workers build one dataset per chunk of this file list (clipray.data.order).
        files = source.files
        if point is None:
            name, storage = f"{config.name}-{tracker.run_id[:8]}", storage_path(config)
            checkpoint_root = f"{storage.rstrip('/')}/{name}/checkpoints"
            tracker.set_tags({"clipray.checkpoints": checkpoint_root})
            tracker.log_metrics({"train/restarts": 0.0}, step=0)
            restarts = 0
        else:
            name, storage, checkpoint_root = point.name, point.storage, point.checkpoint_root
            restarts = point.restarts + 1
            resumed = CheckpointStore(checkpoint_root, tc.keep_checkpoints).latest() or 0
            tracker.log_metrics({"train/restarts": float(restarts), "train/resumed_from_step": float(resumed)},
                                step=resumed)
            tracker.set_tags({f"clipray.restart.{restarts}.cause": "driver lost: clipray train --resume",
                              f"clipray.restart.{restarts}.after_step": str(resumed)})
            print(f"[clipray] resuming run {point.run_id} from step {resumed} ({checkpoint_root})", flush=True)
        lo, hi = tc.worker_range
        elastic = {"elastic_resize_monitor_interval_s": tc.elastic_resize_interval_s} if lo != hi else {}
        # The ignores: mypy types ray.train.ScalingConfig and RunConfig as Train V1's, because
        # ray.train binds the V2 classes under `if is_v2_enabled()`. Train V2 (Ray's default, and
        # the API of RestartTracker) takes a (min, max) worker range, the elastic interval and
        # UserCallbacks.
        trainer = TorchTrainer(
            _worker_entry,  # type: ignore[arg-type]  # V2 passes on what it returns
            train_loop_config={"config": _worker_config(config), "tracking_uri": tracking_uri,
                               "run_id": tracker.run_id, "init_model": init_model,
                               "files": files, "checkpoint_root": checkpoint_root, "stats": stats},
            scaling_config=ray.train.ScalingConfig(
                num_workers=lo if lo == hi else (lo, hi), use_gpu=tc.use_gpu,  # type: ignore[arg-type]
                resources_per_worker={"CPU": tc.cpus_per_worker, **tc.resources_per_worker},
                **elastic,  # type: ignore[arg-type]
            ),
            run_config=ray.train.RunConfig(
                name=name,
                storage_path=storage,
                failure_config=ray.train.FailureConfig(max_failures=tc.max_failures),
                callbacks=[RestartTracker(tracking_uri, tracker.run_id, checkpoint_root,  # type: ignore[list-item]
                                          restarts=restarts)],
            ),
        )
        started = time.monotonic()
        from clipray.tracking.artifacts import system_metrics

        with system_metrics(tracking_uri, tracker.run_id):
            result = trainer.fit()
        if result.error is not None:
            raise result.error
        returned = getattr(result, "return_value", None)  # rank 0's; V2's Result (mypy sees V1's)
        if isinstance(returned, dict) and returned.get("error"):
            raise (TrackingOutage if returned.get("type") == "TrackingOutage" else NonFiniteError)(returned["error"])
        train_s = time.monotonic() - started
        data = ray.get(stats.snapshot.remote())
        metrics = data_metrics(data, train_s)
        store = CheckpointStore(checkpoint_root, tc.keep_checkpoints)
        last = store.latest()
        checkpoint_path = store.uri(last) if last is not None else None
        final_state = store.load(last) if last is not None else None
        if checkpoint_path:  # where `clipray eval --model RUN_ID` finds the weights
            tracker.set_tags({"clipray.checkpoint": checkpoint_path})
        if config.eval.zeroshot_source and final_state is not None:
            metrics.update(evaluate_state(config, final_state))
        tracker.log_metrics(metrics, step=tc.steps)
        out = TrainResult(tracker.run_id, tracking_uri, experiment, checkpoint_path, metrics, data)
        if final_state is not None:
            from clipray.tracking.publish import publish_run

            published = publish_run(tracker, config, final_state["objective"]["model"],
                                    version_tags={**(version_tags or {}), **{k: str(v) for k, v in metrics.items()
                                                                             if k.startswith("eval/")}})
            out.model_uri, out.model_name, out.model_version = (published.model_uri, published.name,
                                                                published.version)
        status = "FINISHED"
        return out
    except BaseException as e:
        tracker.set_tags({"clipray.error": f"{type(e).__name__}: {e}"[:4000]})
        raise
    finally:
        beat.stop()
        tracker.close(status)


def _worker_config(config: PipelineConfig) -> dict[str, Any]:
    """The config for the workers, local paths made absolute (workers run in another cwd)."""
    return with_absolute_paths(config)


def data_metrics(data: dict[str, Any], wall_s: float) -> dict[str, float]:
    out = {f"data/dropped/{reason}": float(n) for reason, n in data["dropped"].items()}
    out["data/rows_in"] = float(data["rows_in"])
    out["data/rows_out"] = float(data["rows_out"])
    out["data/rows_per_s"] = data["rows_in"] / wall_s if wall_s > 0 else 0.0
    # Throughput of the CPU stage itself: rows per second of op time, summed over its actors.
    busy = data.get("busy_s", 0.0)
    out["data/stage_rows_per_s"] = data["rows_in"] / busy if busy > 0 else 0.0
    return out


def evaluate_state(config: PipelineConfig, state: Any) -> dict[str, float]:
    from clipray.eval.suite import evaluate_in_process
    from clipray.eval.zeroshot import load_zeroshot_task
    from clipray.models import build_model

    model = build_model(config.model)
    model.load_state_dict(state["objective"]["model"])
    return evaluate_in_process(model, config, load_zeroshot_task(config))
