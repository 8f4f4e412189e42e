"""The trained model as an MLflow pyfunc model that embeds images and texts.

Input: a DataFrame with an `image` column (encoded image bytes) and/or a `text` column; each row
holds one of them. Output: one L2-normalised embedding per row, float32 (N, embed_dim). Images go
through the evaluation preprocessing (decode, resize, centre crop), texts through the pipeline's
tokenizer, so the logged model embeds exactly as the in-process model does (`embed_images`,
`embed_texts` below are what both use).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from clipray.config import PipelineConfig, to_dict

STATE_FILE = "model_state.pt"
CONFIG_FILE = "pipeline.yaml"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")  # the model class, logged as code


def embed_images(model: Any, config: PipelineConfig, images: Sequence[bytes]) -> np.ndarray:
    """L2-normalised image embeddings of encoded images (undecodable images raise)."""
    import torch
    import torch.nn.functional as F

    from clipray.data.ops.base import CountingStats
    from clipray.data.pipeline import Preprocess
    from clipray.models.common.image import to_model_input

    prep = Preprocess(config, train=False, names=("decode", "image_transform"))
    batch: dict[str, Any] = {"key": np.arange(len(images)).astype(str), config.data.image_column: list(images)}
    counts = CountingStats()
    for op in prep.ops:
        batch = op(batch, counts)
    if counts.dropped:
        raise ValueError(f"images that cannot be embedded: {dict(counts.dropped)}")
    with torch.no_grad():
        x = to_model_input(torch.from_numpy(batch["image"]), config.image.mean, config.image.std)
        return F.normalize(model.encode_image(x).float(), dim=-1).numpy()


def embed_texts(model: Any, config: PipelineConfig, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised text embeddings, the texts encoded as in training (tokens or rendered pixels)."""
    import torch
    import torch.nn.functional as F

    from clipray.eval.zeroshot import text_encoder_input

    with torch.no_grad():
        inputs = text_encoder_input(config)(list(texts))
        return F.normalize(model.encode_text(inputs).float(), dim=-1).numpy()


def load_model(config: PipelineConfig, state_dict: dict[str, Any]) -> Any:
    from clipray.models import build_model

    model = build_model(config.model)
    model.load_state_dict(state_dict)
    return model.eval()


def predict_frame(model: Any, config: PipelineConfig, frame: Any) -> np.ndarray:
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
    for rows, fn, values in ((img_rows, embed_images, images), (txt_rows, embed_texts, texts)):
        if rows:
            emb = fn(model, config, [values[i] for i in rows])
            if out is None:
                out = np.zeros((n, emb.shape[1]), dtype=np.float32)
            out[rows] = emb
    assert out is not None
    return out


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and v != v


def log_pyfunc_model(tracking_uri: str, run_id: str, config: PipelineConfig, state_dict: dict[str, Any],
                     example_image: bytes, example_text: str, *, name: str = "model") -> str:
    """Log the model into run `run_id` with a signature; returns its model URI."""
    import mlflow
    import pandas as pd
    import torch
    from mlflow.models import infer_signature

    import clipray
    from clipray.tracking.tracker import mask_secrets

    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        state_path = Path(tmp) / STATE_FILE
        torch.save(state_dict, state_path)
        config_path = Path(tmp) / CONFIG_FILE
        config_path.write_text(yaml.safe_dump(_masked_config(config, mask_secrets), sort_keys=False))
        example = pd.DataFrame({"image": [example_image, None], "text": [None, example_text]})
        output = predict_frame(load_model(config, state_dict), config, example)
        signature = infer_signature(example, output)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=name, python_model=str(PYFUNC_CODE), signature=signature,
                artifacts={"state": str(state_path), "config": str(config_path)},
                code_paths=[str(Path(clipray.__file__).parent)],
                # Text only: MLflow's JSON copy of an example cannot carry raw image bytes beside
                # nulls. The signature above describes both columns.
                input_example=example[["text"]].iloc[1:],
            )
    return info.model_uri


def _masked_config(config: PipelineConfig, mask: Any) -> dict[str, Any]:
    from clipray.config.load import flatten, unflatten

    return unflatten(mask(flatten(to_dict(config))))
