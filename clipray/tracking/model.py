"""The trained model as an MLflow pyfunc model that embeds images and texts.

Input: a DataFrame with an `image` column (encoded image bytes) and/or a `text` column; each row
holds one of them. Output: one L2-normalised embedding per row, float32 (N, embed_dim). Images go
through the evaluation preprocessing (decode, resize, centre crop), texts through the pipeline's
tokenizer or renderer, with the same functions as the in-process evaluation
(`clipray.models.inputs`). The weights travel as a checkpoint file (`clipray.models.checkpoint`)
holding the model entry and the config with its secrets masked.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipray.config import PipelineConfig, to_dict
from clipray.models.checkpoint import STATE_FILE, write_state
from clipray.models.inputs import TextInput, embed_images, embed_texts, image_pixels, text_input

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")  # the model class, logged as code


def predict_frame(model: Any, config: PipelineConfig, frame: Any, to_text: TextInput | None = None) -> np.ndarray:
    """Embeddings for the rows of `frame` (columns `image` and/or `text`, one per row)."""
    n = len(frame)
    out: np.ndarray | None = None
    # Column values: bytes / str, and None or NaN in the rows that hold the other kind.
    images: Sequence[Any] = frame["image"] if "image" in frame else [None] * n
    texts: Sequence[Any] = frame["text"] if "text" in frame else [None] * n
    img_rows = [i for i, v in enumerate(images) if v is not None and not _isnan(v)]
    txt_rows = [i for i, v in enumerate(texts) if v is not None and not _isnan(v) and i not in set(img_rows)]
    missing = set(range(n)) - set(img_rows) - set(txt_rows)
    if missing:
        raise ValueError(f"rows {sorted(missing)[:5]} have neither an image nor a text")
    embedded = []
    if img_rows:
        pixels = image_pixels(config, [images[i] for i in img_rows], "images that cannot be embedded")
        embedded.append((img_rows, embed_images(model, pixels, config).numpy()))
    if txt_rows:
        embedded.append((txt_rows, embed_texts(model, [texts[i] for i in txt_rows],
                                               to_text or text_input(config)).numpy()))
    for rows, emb in embedded:
        if out is None:
            out = np.zeros((n, emb.shape[1]), dtype=np.float32)
        out[rows] = emb
    assert out is not None
    return out


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and v != v


def log_pyfunc_model(tracking_uri: str, run_id: str, config: PipelineConfig, model: Any, step: int,
                     example_image: bytes, example_text: str, *, name: str = "model") -> str:
    """Log `model` (trained for `step` steps) into run `run_id` with a signature; returns its model URI."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    import clipray
    from clipray.tracking.tracker import mask_secrets

    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        write_state({"objective": {"model": model.state_dict()}, "config": _masked_config(config, mask_secrets),
                     "step": step}, tmp)
        example = pd.DataFrame({"image": [example_image, None], "text": [None, example_text]})
        signature = infer_signature(example, predict_frame(model, config, example))
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=name, python_model=str(PYFUNC_CODE), signature=signature,
                artifacts={"state": str(Path(tmp) / STATE_FILE)},
                code_paths=[str(Path(clipray.__file__).parent)],
                # Text only: MLflow's JSON copy of an example cannot carry raw image bytes beside
                # nulls. The signature above describes both columns.
                input_example=example[["text"]].iloc[1:],
            )
    return info.model_uri


def _masked_config(config: PipelineConfig, mask: Any) -> dict[str, Any]:
    from clipray.config.load import flatten, unflatten

    return unflatten(mask(flatten(to_dict(config))))
