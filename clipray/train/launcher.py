"""Driver side of a training run: open the MLflow run, check the inputs, connect to Ray, fit, finish
(evaluate once, publish once). `train` tells it in that order; each step is a function below."""

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
from clipray.eval.loading import CHECKPOINT_TAG
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

    The story: open the MLflow run, check the inputs before Ray starts, connect to Ray, fit,
    finish (evaluate once, publish once). A failure anywhere marks the run FAILED with its cause.

    `resume`: the id of a run whose driver was lost; it continues from its latest committed
    checkpoint in the same MLflow run (`clipray.train.resume`).

    `init_model`: a model state dict to warm-start from (when no checkpoint of this run exists).
    `tags`: extra MLflow run tags; `version_tags`: tags of the registered model version.
    """
    run = open_run(config, tags, resume)
    status = "FAILED"
    beat = heartbeat(run.tracker)
    try:
        files = check_inputs(config, run)
        init_ray(config, forward_env=(FAULT_ENV,))  # the fault injection of recovery tests reaches the workers
        fitted = fit(config, run, files, init_model)
        result = finish(config, run, fitted, version_tags)
        status = "FINISHED"
        return result
    except BaseException as e:
        run.tracker.set_tags({"clipray.error": f"{type(e).__name__}: {e}"[:4000]})
        raise
    finally:
        beat.stop()
        run.tracker.close(status)


@dataclass
class Run:
    """The MLflow run a training run logs into, and where its checkpoints go."""

    tracker: MlflowTracker
    tracking_uri: str
    experiment: str
    name: str  # the Ray Train run name
    storage: str  # the Ray Train storage path
    checkpoint_root: str  # <storage>/<name>/checkpoints
    restarts: int  # driver restarts (`--resume`) so far, this one included
    resumed: bool


def open_run(config: PipelineConfig, tags: dict[str, str] | None, resume: str | None) -> Run:
    """A new MLflow run, or the run `resume` names (refused before anything runs if it cannot go on)."""
    from clipray.train.resume import resume_point

    tracking_uri = resolve_tracking_uri(config.tracking.tracking_uri)
    experiment = config.tracking.experiment or config.name
    point = resume_point(config, tracking_uri, resume) if resume else None
    if point is not None:
        tracker = MlflowTracker(tracking_uri, point.run_id)
        tracker.client.update_run(point.run_id, status="RUNNING")
        run = Run(tracker, tracking_uri, experiment, point.name, point.storage, point.checkpoint_root,
                  point.restarts + 1, resumed=True)
    else:
        run_tags = {"clipray.pipeline": config.name, "clipray.family": config.model.family, **(tags or {})}
        if config.tracking.parent_run_id:
            run_tags["mlflow.parentRunId"] = config.tracking.parent_run_id  # MLflow's nesting tag
        tracker = start_run(experiment, tracking_uri, run_name=config.tracking.run_name, tags=run_tags)
        name, storage = f"{config.name}-{tracker.run_id[:8]}", storage_path(config)
        run = Run(tracker, tracking_uri, experiment, name, storage, f"{storage.rstrip('/')}/{name}/checkpoints",
                  restarts=0, resumed=False)
    print(f"[clipray] MLflow run {tracker.run_id} in experiment {experiment!r} ({tracking_uri})", flush=True)
    print(f"mlflow_run_id: {tracker.run_id}", flush=True)  # what `--resume` takes if this driver is lost
    return run


def check_inputs(config: PipelineConfig, run: Run) -> list[str]:
    """Before Ray starts: the config logged, the source checked (S3 access, partitions, schemas and
    the ops' settings); returns the source's files, which the workers cut into chunks."""
    from clipray.data.pipeline import preflight

    if not run.resumed:
        log_config(run.tracker, config)
    source = preflight(config)
    if not run.resumed:
        from clipray.data.curate.run import log_curated_source

        log_curated_source(run.tracker, config)  # curated data: its drops (eval_overlap, ...) as data/curated/*
        log_parameter_counts(run.tracker, config.model)
    return list(source.files)


@dataclass
class Fitted:
    data: dict[str, Any]  # the data stage's counts (rows in/out, drops by reason)
    train_s: float


def fit(config: PipelineConfig, run: Run, files: list[str], init_model: dict[str, Any] | None) -> Fitted:
    """Run the TorchTrainer to the end; a worker's error is raised here."""
    import ray

    from clipray.data.stats import stats_actor

    record_start(config, run)
    stats = stats_actor()
    trainer = build_trainer(config, run, {"config": _worker_config(config), "tracking_uri": run.tracking_uri,
                                          "run_id": run.tracker.run_id, "init_model": init_model,
                                          "files": files, "checkpoint_root": run.checkpoint_root, "stats": stats})
    started = time.monotonic()
    from clipray.tracking.artifacts import system_metrics

    with system_metrics(run.tracking_uri, run.tracker.run_id):
        result = trainer.fit()
    raise_worker_error(result)
    return Fitted(ray.get(stats.snapshot.remote()), time.monotonic() - started)


def record_start(config: PipelineConfig, run: Run) -> None:
    """Where the checkpoints go, and the restart count (a resumed run: from which step)."""
    if not run.resumed:
        run.tracker.set_tags({"clipray.checkpoints": run.checkpoint_root})
        run.tracker.log_metrics({"train/restarts": 0.0}, step=0)
        return
    from clipray.train.checkpoint import CheckpointStore

    resumed = CheckpointStore(run.checkpoint_root, config.train.keep_checkpoints).latest() or 0
    run.tracker.log_metrics({"train/restarts": float(run.restarts), "train/resumed_from_step": float(resumed)},
                            step=resumed)
    run.tracker.set_tags({f"clipray.restart.{run.restarts}.cause": "driver lost: clipray train --resume",
                          f"clipray.restart.{run.restarts}.after_step": str(resumed)})
    print(f"[clipray] resuming run {run.tracker.run_id} from step {resumed} ({run.checkpoint_root})", flush=True)


def build_trainer(config: PipelineConfig, run: Run, loop_config: dict[str, Any]) -> Any:
    """Ray Train V2's TorchTrainer for `_worker_entry`, with the run's scaling, storage and callbacks."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from clipray.train.callbacks import RestartTracker

    tc = config.train
    lo, hi = tc.worker_range
    elastic = {"elastic_resize_monitor_interval_s": tc.elastic_resize_interval_s} if lo != hi else {}
    # The ignores: mypy types ray.train.ScalingConfig and RunConfig as Train V1's, because
    # ray.train binds the V2 classes under `if is_v2_enabled()`. Train V2 (Ray's default, and
    # the API of RestartTracker) takes a (min, max) worker range, the elastic interval and
    # UserCallbacks.
    return TorchTrainer(
        _worker_entry,  # type: ignore[arg-type]  # V2 passes on what it returns
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=lo if lo == hi else (lo, hi), use_gpu=tc.use_gpu,  # type: ignore[arg-type]
            resources_per_worker={"CPU": tc.cpus_per_worker, **tc.resources_per_worker},
            **elastic,  # type: ignore[arg-type]
        ),
        run_config=ray.train.RunConfig(
            name=run.name,
            storage_path=run.storage,
            failure_config=ray.train.FailureConfig(max_failures=tc.max_failures),
            callbacks=[RestartTracker(run.tracking_uri, run.tracker.run_id,  # type: ignore[list-item]
                                      run.checkpoint_root, restarts=run.restarts)],
        ),
    )


def raise_worker_error(result: Any) -> None:
    """The run's error: Ray Train's, or one that rank 0 returned (`_worker_entry`)."""
    from clipray.tracking.spool import TrackingOutage
    from clipray.train.guard import NonFiniteError

    if result.error is not None:
        raise result.error
    returned = getattr(result, "return_value", None)  # rank 0's; V2's Result (mypy sees V1's)
    if isinstance(returned, dict) and returned.get("error"):
        raise (TrackingOutage if returned.get("type") == "TrackingOutage" else NonFiniteError)(returned["error"])


def finish(config: PipelineConfig, run: Run, fitted: Fitted, version_tags: dict[str, str] | None) -> TrainResult:
    """The final checkpoint becomes a model once; it is evaluated once and published once."""
    from clipray.models import build_trained_model
    from clipray.train.checkpoint import CheckpointStore

    metrics = data_metrics(fitted.data, fitted.train_s)
    tracker = run.tracker
    out = TrainResult(tracker.run_id, run.tracking_uri, run.experiment, None, metrics, fitted.data)
    store = CheckpointStore(run.checkpoint_root, config.train.keep_checkpoints)
    last = store.latest()
    if last is None:
        tracker.log_metrics(metrics, step=config.train.steps)
        return out
    out.checkpoint_path = store.uri(last)
    tracker.set_tags({CHECKPOINT_TAG: out.checkpoint_path})  # where `clipray eval --model RUN_ID` finds it
    state = store.load(last)
    assert state is not None
    model = build_trained_model(config.model, state["objective"]["model"])
    if config.eval.zeroshot_source:
        metrics.update(final_evaluation(config, tracker, model))
    tracker.log_metrics(metrics, step=config.train.steps)
    from clipray.tracking.publish import publish_run

    evals = {k: str(v) for k, v in metrics.items() if k.startswith("eval/")}
    published = publish_run(tracker, config, model, int(state["step"]), version_tags={**(version_tags or {}), **evals})
    out.model_uri, out.model_name, out.model_version = published.model_uri, published.name, published.version
    return out


def final_evaluation(config: PipelineConfig, tracker: MlflowTracker, model: Any) -> dict[str, float]:
    """The one evaluation (`clipray.eval.suite.evaluate`) of the trained model, and its plots."""
    from clipray.eval.plots import log_eval_plots
    from clipray.eval.suite import evaluate
    from clipray.eval.zeroshot import load_zeroshot_task

    task = load_zeroshot_task(config)
    evaluation = evaluate(model, config, task)
    log_eval_plots(tracker, model, config, task, evaluation)
    return evaluation.metrics


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
