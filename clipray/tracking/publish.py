"""After training: log the sample batch, training curves and the pyfunc model; register it.
(The evaluation's metrics and plots come from `clipray.eval`, before this.)

Registration uses aliases (the deprecated stages are not used). `clipray train` registers every
run's model as a new version of `tracking.registered_model`; retraining moves `champion` (see
clipray.schedule.retrain).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipray.config import PipelineConfig


@dataclass
class Published:
    model_uri: str
    name: str | None = None
    version: str | None = None


def publish_run(tracker: Any, config: PipelineConfig, model: Any, step: int, *,
                version_tags: dict[str, str] | None = None) -> Published:
    """Artifacts and the trained `model` of a finished training run in `tracker`'s MLflow run."""
    from clipray.tracking.artifacts import first_example, log_sample_batch, log_training_curves
    from clipray.tracking.model import log_pyfunc_model

    log_sample_batch(tracker, config)
    log_training_curves(tracker)
    if not config.tracking.log_model:
        return Published(model_uri="")
    image, text = first_example(config)
    uri = log_pyfunc_model(tracker.tracking_uri, tracker.run_id, config, model, step, image, text)
    name = config.tracking.registered_model or config.name
    version = register(tracker.tracking_uri, uri, name, tags=version_tags)
    return Published(uri, name, version)


def register(tracking_uri: str, model_uri: str, name: str, tags: dict[str, str] | None = None) -> str:
    """A new version of registered model `name` from `model_uri`; returns the version number."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mv = mlflow.register_model(model_uri, name, tags=tags or {})
    return str(mv.version)
