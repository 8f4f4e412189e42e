"""Load a trained model: from an MLflow run, a checkpoint directory or a registered model version.

References (`--model` of `clipray eval`, `embed`, `export`; the champion of retraining):

- a checkpoint directory holding `state.pt` (`clipray.models.checkpoint`), local or a URI
  (s3://... with the endpoint of $AWS_ENDPOINT_URL, as training wrote it);
- an MLflow run id or `runs:/<id>`: the run's `clipray.checkpoint` tag (set by the launcher) names
  its final checkpoint;
- a registered model version, `models:/<name>/<version>` or `models:/<name>@<alias>`: the state
  file logged with the version's pyfunc model.

The architecture comes from the checkpoint's own `config` entry (for a run: the config the
workers ran, secrets unmasked and local paths absolute), so there is one source of truth. The
state is read once and kept on the `ModelSource`; `load_model` adds the model built from it, with
its image preprocessing and its text input (tokenizer or renderer).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipray.config import PipelineConfig, load_config
from clipray.errors import InvalidInputError, MissingFileError
from clipray.models import build_trained_model
from clipray.models.checkpoint import STATE_FILE, has_state, read_state
from clipray.models.inputs import TextInput, image_pixels, text_input

CHECKPOINT_TAG = "clipray.checkpoint"


@dataclass
class ModelSource:
    config: PipelineConfig
    checkpoint: str  # the checkpoint directory or URI, or the models:/ URI of a registered version
    run_id: str | None = None  # the training run, when the model came from one
    step: int = 0
    state: dict[str, Any] = field(default_factory=dict, repr=False)  # the training state, read once
    version: str | None = None  # the registered model version, when the model came from the registry

    @property
    def state_dict(self) -> dict[str, Any]:
        """The model's parameters."""
        return self.state["objective"]["model"]


@dataclass
class LoadedModel:
    """A trained model in eval mode, with what it reads: images and text as in training."""

    model: Any
    config: PipelineConfig
    source: ModelSource
    _text: TextInput | None = field(default=None, repr=False)

    def image_input(self, encoded: Sequence[bytes]) -> np.ndarray:
        """Encoded images -> uint8 (N, S, S, 3) through the evaluation image ops."""
        return image_pixels(self.config, encoded)

    @property
    def text_input(self) -> TextInput:
        """Strings -> token ids, or rendered pixels (CLIPPO); the tokenizer or font is loaded on first use."""
        if self._text is None:
            self._text = text_input(self.config)
        return self._text


def load_model(ref: str | ModelSource, tracking_uri: str | None = None) -> LoadedModel:
    """The model of `ref` (see the module docstring), built once, on the CPU."""
    source = ref if isinstance(ref, ModelSource) else resolve_model(ref, tracking_uri)
    model = build_trained_model(source.config.model, source.state_dict)
    return LoadedModel(model, source.config, source)


def resolve_model(ref: str, tracking_uri: str | None = None) -> ModelSource:
    """Where `ref`'s weights are, with its config and state (read once)."""
    if ref.startswith("models:/"):
        return _from_registry(ref, tracking_uri)
    if ("://" in ref and not ref.startswith("runs:/")) or Path(ref).is_dir():
        if "://" not in ref and not has_state(ref):
            raise MissingFileError(f"--model {ref}: directory has no {STATE_FILE} (not a clipray checkpoint)")
        return _from_state(read_state(ref), str(Path(ref).resolve()) if "://" not in ref else ref)
    run_id = ref.removeprefix("runs:/").strip("/").split("/")[0]
    return _from_run(run_id, tracking_uri)


def _from_state(state: dict[str, Any], where: str, run_id: str | None = None) -> ModelSource:
    if "config" not in state:
        raise InvalidInputError(f"checkpoint {where} has no 'config' entry; cannot tell the architecture")
    if not isinstance(state.get("objective"), dict) or "model" not in state["objective"]:
        raise InvalidInputError(f"checkpoint {where} has no 'objective.model' entry: no model weights in it")
    return ModelSource(load_config(data=state["config"]), where, run_id, int(state.get("step", 0)), state)


def _client(tracking_uri: str | None) -> tuple[Any, str]:
    from mlflow.tracking import MlflowClient

    from clipray.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def _from_run(run_id: str, tracking_uri: str | None) -> ModelSource:
    from mlflow.exceptions import MlflowException

    client, uri = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise MissingFileError(f"--model {run_id}: neither a checkpoint directory nor a run in {uri} ({e})") from e
    checkpoint = run.data.tags.get(CHECKPOINT_TAG)
    if not checkpoint:
        raise MissingFileError(f"run {run_id} has no {CHECKPOINT_TAG!r} tag: it finished without a checkpoint, "
                               f"or was trained before runs were tagged")
    source = _from_state(read_state(checkpoint), checkpoint, run_id)
    source.step = source.step or int(run.data.metrics.get("train/step", 0)) or source.config.train.steps
    return source


def _from_registry(ref: str, tracking_uri: str | None) -> ModelSource:
    """`models:/<name>/<version>` or `models:/<name>@<alias>`: the state logged with that version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client, uri = _client(tracking_uri)
    spec = ref.removeprefix("models:/")
    try:
        if "@" in spec:
            name, alias = spec.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = spec.partition("/")
            version = client.get_model_version(name, number)
    except MlflowException as e:
        raise MissingFileError(f"--model {ref}: not in the model registry at {uri} ({e})") from None
    where = f"models:/{name}/{version.version}"
    # MLflow resolves a models:/ URI through its global tracking URI (3.18 does not pass the
    # download's tracking_uri/registry_uri on to the registry lookup), so it is set here as
    # registration sets it (clipray.tracking.publish).
    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=where, dst_path=tmp))
        found = next(local.rglob(STATE_FILE), None)
        if found is None:
            raise MissingFileError(f"--model {ref}: version {version.version} holds no {STATE_FILE} (not logged by "
                                   f"this clipray)")
        state = read_state(str(found.parent))
    source = _from_state(state, where, version.run_id or None)
    source.version = str(version.version)
    return source
