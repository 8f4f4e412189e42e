"""The CLIP-score stage of `clipray data curate`: a trained model scores image-text pairs.

    ds.map_batches(ClipScorer, ActorPoolStrategy(size=data.score_actors), num_gpus=1 when the
    cluster has GPUs) -> `clip_score` column; rows below `data.min_clip_score` dropped as
    `low_clip_score` (the op: clipray.data.curate.score).

The model is named by `data.score_model`: a training run id or `runs:/<id>`, a registered model
(`models:/name@alias` or `models:/name/<version>`, resolved to the run that logged it), or a
checkpoint directory. The driver reads the weights once (clipray.eval.loading) and puts them in
the object store; each actor builds the model once (`model_encoder`, the factory the op calls).
Images go through the model's own `decode` and `image_transform` (evaluation: resize + centre
crop), captions through its tokenizer, as `clipray eval` does.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from clipray.data.curate.score import ClipScorer
from clipray.data.ops.base import CountingStats, batch_len
from clipray.errors import MissingFileError

if TYPE_CHECKING:
    import ray.data

    from clipray.config import PipelineConfig
    from clipray.eval.loading import ModelSource


def resolve_score_model(ref: str, tracking_uri: str | None = None) -> ModelSource:
    """`data.score_model` (a run id, a checkpoint, or a registered version `models:/NAME/N` or
    `models:/NAME@ALIAS`) through the one model loader, its errors naming the setting."""
    from clipray.eval.loading import resolve_model

    try:
        return resolve_model(ref, tracking_uri)
    except MissingFileError as e:
        raise MissingFileError(f"data.score_model: {e}") from None


class ModelEncoder:
    """A trained model on this process's device: cosine(image, caption) per row."""

    def __init__(self, model_config: dict[str, Any], state_ref: Any) -> None:
        import ray
        import torch

        from clipray.config import load_config
        from clipray.data.pipeline import build_ops
        from clipray.models import build_trained_model
        from clipray.models.inputs import text_input

        self.config = load_config(data=model_config)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        state = ray.get(state_ref) if isinstance(state_ref, ray.ObjectRef) else state_ref
        self.model: Any = build_trained_model(self.config.model, state).to(self.device)
        self.ops = build_ops(self.config, train=False, names=("decode", "image_transform"))
        self.to_text = text_input(self.config)

    def scores(self, images: list[Any], captions: list[str]) -> np.ndarray:
        """Cosine similarities; NaN for an image the model's decode drops."""
        import torch
        import torch.nn.functional as F

        from clipray.models.common.image import to_model_input

        batch: dict[str, Any] = {"jpg": images, "__i": np.arange(len(images))}
        counts = CountingStats()
        for op in self.ops:
            batch = op(batch, counts)
        out = np.full(len(images), np.nan, dtype=np.float32)
        if batch_len(batch) == 0:
            return out
        idx = np.asarray(batch["__i"])
        with torch.no_grad():
            x = to_model_input(torch.from_numpy(np.ascontiguousarray(batch["image"])).to(self.device),
                               self.config.image.mean, self.config.image.std)
            img = F.normalize(self.model.encode_image(x).float(), dim=-1)
            txt = F.normalize(self.model.encode_text(self.to_text([captions[i] for i in idx]).to(self.device))
                              .float(), dim=-1)
            out[idx] = (img * txt).sum(-1).cpu().numpy()
        return out


def model_encoder(model_config: dict[str, Any], state_ref: Any) -> functools.partial[ModelEncoder]:
    """The encoder factory for ClipScorer (picklable: each actor builds the model itself)."""
    return functools.partial(ModelEncoder, model_config, state_ref)


def score_stage(ds: ray.data.Dataset, config: PipelineConfig, stats: Any) -> ray.data.Dataset:
    """`ds` with the `clip_score` column, rows below `data.min_clip_score` dropped."""
    import ray
    from ray.data import ActorPoolStrategy

    from clipray.config import to_dict

    d = config.data
    source = resolve_score_model(d.score_model or "", config.tracking.tracking_uri)
    state_ref = ray.put(source.state_dict)
    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    return ds.map_batches(
        ClipScorer,
        fn_constructor_args=(model_encoder(to_dict(source.config), state_ref), d.min_clip_score, stats,
                             d.image_column, d.caption_column),
        batch_size=64, batch_format="pyarrow", zero_copy_batch=True,
        compute=ActorPoolStrategy(size=d.score_actors),
        num_gpus=gpus, num_cpus=0 if gpus else d.num_cpus)
