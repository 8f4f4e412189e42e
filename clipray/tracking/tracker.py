"""Tracker protocol and its MLflow implementation.

The driver creates the MLflow run and passes (tracking_uri, run_id) to the training workers;
rank 0 reopens that run by id, so a restarted worker group keeps logging into the same run.
Metric names are namespaced: `train/…`, `data/…`, `eval/…`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

# "token" but not "tokenizer"/"tokenize": text_encoding.tokenizer is configuration, not a credential.
SECRET_KEY = re.compile(r"(secret|password|passwd|token(?!i[sz])|api[_-]?key|access[_-]?key|credential|private)",
                        re.I)
MASK = "***"


# Environment variables whose values are secrets even when a config value does not say so by its key.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_PASSWORD",
              "MLFLOW_TRACKING_TOKEN", "HF_TOKEN")
MIN_SECRET_LEN = 6  # shorter values ("1", "true") would mask unrelated text


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the environment's secret variables (listed above, or named like a secret)."""
    env = os.environ if environ is None else environ
    names = {k for k in env if k in SECRET_ENV or SECRET_KEY.search(k)}
    return sorted({env[k] for k in names if len(env[k] or "") >= MIN_SECRET_LEN}, key=len, reverse=True)


def mask_text(text: str, secrets: list[str] | None = None) -> str:
    """`text` with credentials in URIs and any secret environment value replaced by the mask."""
    text = re.sub(r"(://[^/:@]+:)[^/@]+@", r"\1" + MASK + "@", text)
    for value in secret_env_values() if secrets is None else secrets:
        text = text.replace(value, MASK)
    return text


def mask_secrets(params: Mapping[str, Any]) -> dict[str, Any]:
    """Replace values whose key names a secret, credentials embedded in URIs, and any value that
    contains the value of a secret environment variable (AWS_SECRET_ACCESS_KEY, RAY_AUTH_TOKEN, ...)."""
    secrets = secret_env_values()
    out: dict[str, Any] = {}
    for key, value in params.items():
        if SECRET_KEY.search(key):
            out[key] = MASK if value not in (None, "") else value
        elif isinstance(value, str):
            out[key] = mask_text(value, secrets)
        elif isinstance(value, list | tuple) and any(isinstance(v, str) for v in value):
            out[key] = [mask_text(v, secrets) if isinstance(v, str) else v for v in value]
        else:
            out[key] = value
    return out


def resolve_tracking_uri(configured: str | None = None) -> str:
    """Config, then $MLFLOW_TRACKING_URI, then a SQLite store in the working directory; absolute."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlruns.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    elif "://" not in uri:  # a plain directory: MLflow's file store
        uri = Path(uri).resolve().as_uri()
    return uri


class Tracker(Protocol):
    @property
    def run_id(self) -> str | None: ...  # read-only, so MlflowTracker's `str` fits

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Used on every rank but the one that owns the run, and in unit tests."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class MlflowTracker:
    """Logs into an existing MLflow run by id (no global `mlflow.start_run` state)."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in mask_secrets(params).items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit for params
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which metric `key` has been logged in this run."""
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in mask_secrets(tags).items():
            self.client.set_tag(self.run_id, k, str(v))

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def _param_value(v: Any) -> str:
    s = "None" if v is None else str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


def start_run(experiment: str, tracking_uri: str, run_name: str | None = None,
              tags: Mapping[str, str] | None = None) -> MlflowTracker:
    """Create (or reuse) the experiment and a new run in it; returns a tracker bound to it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        artifact_location = None
        if tracking_uri.startswith("sqlite:///"):
            # Keep artifacts beside the database, not relative to whichever cwd a process has.
            db = Path(tracking_uri.removeprefix("sqlite:///"))
            artifact_location = (db.parent / "mlartifacts").as_uri()
        exp_id = client.create_experiment(experiment, artifact_location=artifact_location)
    else:
        exp_id = exp.experiment_id
    run = client.create_run(exp_id, run_name=mask_text(run_name) if run_name else None,
                            tags=dict(mask_secrets(tags or {})))
    return MlflowTracker(tracking_uri, run.info.run_id)
