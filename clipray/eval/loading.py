"""Find a trained model: an MLflow run id, a `runs:/<id>` URI or a checkpoint directory.

A training run is tagged `clipray.checkpoint` with its final checkpoint's location (set by the
launcher) and carries the resolved `config.yaml` artifact, which gives the architecture. A
checkpoint directory holds `state.pt`, whose `config` entry gives it. Checkpoints on a remote
storage path (s3://... with the endpoint of $AWS_ENDPOINT_URL, as training wrote them, or another
pyarrow filesystem URI) are read in place; the state is read once and kept on the `ModelSource`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clipray.config import PipelineConfig, load_config
from clipray.errors import InvalidInputError, MissingFileError
from clipray.train.context import STATE_FILE, load_state

CHECKPOINT_TAG = "clipray.checkpoint"


@dataclass
class ModelSource:
    config: PipelineConfig
    checkpoint: str  # local directory or URI holding state.pt
    run_id: str | None = None  # the training run, when the model came from one
    step: int = 0
    state: dict[str, Any] | None = field(default=None, repr=False)  # the checkpoint's state, once read


def resolve_model(ref: str, tracking_uri: str | None = None) -> ModelSource:
    """`ref` is a checkpoint directory, `runs:/<run_id>` or a bare MLflow run id."""
    path = Path(ref)
    if path.is_dir():
        if not (path / STATE_FILE).exists():
            raise MissingFileError(f"--model {ref}: directory has no {STATE_FILE} (not a clipray checkpoint)")
        state = load_state(path)
        return ModelSource(_config_from_state(state, ref), str(path.resolve()), None, int(state.get("step", 0)), state)
    if ref.startswith("models:/"):
        raise InvalidInputError(f"--model {ref}: registered-model URIs are not supported here; pass the run id or a "
                         f"checkpoint directory")
    run_id = ref.removeprefix("runs:/").strip("/").split("/")[0]
    return _from_run(run_id, tracking_uri)


def _from_run(run_id: str, tracking_uri: str | None) -> ModelSource:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from clipray.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise MissingFileError(f"--model {run_id}: neither a checkpoint directory nor a run in {uri} ({e})") from e
    checkpoint = run.data.tags.get(CHECKPOINT_TAG)
    if not checkpoint:
        raise MissingFileError(f"run {run_id} has no {CHECKPOINT_TAG!r} tag: it finished without a checkpoint, "
                                f"or was trained before runs were tagged")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, "config.yaml", tmp)
        except MlflowException as e:
            raise MissingFileError(f"run {run_id}: no config.yaml artifact ({e})") from e
        config = load_config(data=yaml.safe_load(Path(local).read_text()))
    state = None
    if "://" in checkpoint or (Path(checkpoint) / STATE_FILE).exists():
        # The checkpoint's config is the one the workers ran: secrets unmasked, local paths (a
        # trained text_encoding.tokenizer) absolute. config.yaml has them as given on the command line.
        state = read_state(checkpoint)
        config = _config_from_state(state, checkpoint)
    step = int(run.data.metrics.get("train/step", 0)) or config.train.steps
    return ModelSource(config, checkpoint, run_id, step, state)


def read_state(checkpoint: str) -> dict[str, Any]:
    """The training state in the checkpoint directory `checkpoint`: a local path or a URI."""
    if "://" not in checkpoint:
        return load_state(checkpoint)
    import io

    import torch

    from clipray.data.sources import read_bytes

    data = read_bytes(f"{checkpoint.rstrip('/')}/{STATE_FILE}")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def _config_from_state(state: dict[str, Any], where: str) -> PipelineConfig:
    if "config" not in state:
        raise InvalidInputError(f"checkpoint {where} has no 'config' entry; cannot tell the architecture")
    return load_config(data=state["config"])


def load_state_dict(source: ModelSource) -> dict[str, Any]:
    """The model's parameters from `source.checkpoint` (local or remote)."""
    state = source.state if source.state is not None else read_state(source.checkpoint)
    return state["objective"]["model"]


def build_loaded_model(config: PipelineConfig, state_dict: dict[str, Any]) -> Any:
    """The model in eval mode with the given parameters (strict: a mismatch is an error)."""
    from clipray.models import build_model

    model = build_model(config.model)
    model.load_state_dict(state_dict)
    return model.eval()
