"""Embedding as Ray Data batch inference: an actor class that loads the model once.

    read_parquet -> map_batches(ImageEmbedder | TextEmbedder, ActorPoolStrategy) -> rows with
    `embedding` (fixed-size list<float32>, L2-normalised) plus the pass-through columns.

The driver loads the parameters once and puts them in the object store; each actor builds the
model from the config and that reference, so a checkpoint on S3 is read once, not per actor.
Images go through the same `decode` and `image_transform` ops as training (evaluation mode:
resize + centre crop); undecodable rows are dropped and counted, never embedded as garbage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from clipray.config import PipelineConfig, load_config, to_dict
from clipray.data.ops.base import Batch, CountingStats, batch_len
from clipray.errors import InvalidInputError

if TYPE_CHECKING:
    import ray.data


@dataclass
class EmbedOptions:
    batch_size: int = 256
    actors: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0


def _state_value(state_ref: Any) -> dict[str, Any]:
    import ray

    return ray.get(state_ref) if isinstance(state_ref, ray.ObjectRef) else state_ref


class _Embedder:
    def __init__(self, config: dict[str, Any], state_ref: Any, passthrough: tuple[str, ...]) -> None:
        import torch

        from clipray.models import build_trained_model

        self.config: PipelineConfig = load_config(data=config)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model: Any = build_trained_model(self.config.model, _state_value(state_ref)).to(self.device)
        self.passthrough = passthrough

    def _output(self, batch: Batch, emb: np.ndarray) -> pa.Table:
        cols: dict[str, Any] = {}
        for name in self.passthrough:
            if name in batch:
                col = batch[name]
                cols[name] = pa.array(col.tolist() if isinstance(col, np.ndarray) and col.dtype == object else col)
        flat = pa.array(emb.astype(np.float32).reshape(-1))
        cols["embedding"] = pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]) if emb.size else \
            pa.array([], pa.list_(pa.float32(), emb.shape[1] if emb.ndim == 2 else 1))
        return pa.table(cols)


class ImageEmbedder(_Embedder):
    """Column `image_column` (encoded bytes) -> `embedding`; rows that fail to decode are dropped."""

    def __init__(self, config: dict[str, Any], state_ref: Any, passthrough: tuple[str, ...] = ("key",)) -> None:
        super().__init__(config, state_ref, passthrough)
        from clipray.data.pipeline import build_ops

        self.ops = build_ops(self.config, train=False, names=("decode", "image_transform"))

    def __call__(self, batch: Batch) -> pa.Table:
        import torch
        import torch.nn.functional as F

        from clipray.models.common.image import to_model_input

        counts = CountingStats()
        for op in self.ops:
            batch = op(batch, counts)
        if batch_len(batch) == 0:
            return self._output(batch, np.zeros((0, self.config.model.embed_dim), np.float32))
        with torch.no_grad():
            x = to_model_input(torch.from_numpy(np.ascontiguousarray(batch["image"])).to(self.device),
                               self.config.image.mean, self.config.image.std)
            emb = F.normalize(self.model.encode_image(x).float(), dim=-1).cpu().numpy()
        return self._output(batch, emb)


class TextEmbedder(_Embedder):
    """Column `text_column` (str) -> `embedding`."""

    def __init__(self, config: dict[str, Any], state_ref: Any, passthrough: tuple[str, ...] = ("key",),
                 text_column: str = "caption") -> None:
        super().__init__(config, state_ref, passthrough)
        from clipray.models.inputs import text_input

        self.to_input = text_input(self.config)  # token ids, or rendered pixels (CLIPPO)
        self.text_column = text_column

    def __call__(self, batch: Batch) -> pa.Table:
        import torch
        import torch.nn.functional as F

        texts = [str(t) for t in batch[self.text_column]]
        with torch.no_grad():
            inputs = self.to_input(texts).to(self.device)
            emb = F.normalize(self.model.encode_text(inputs).float(), dim=-1).cpu().numpy()
        return self._output(batch, emb)


def embed_dataset(config: PipelineConfig, state_dict: dict[str, Any], source: str, *, modality: str,
                  columns: list[str], passthrough: tuple[str, ...], options: EmbedOptions,
                  text_column: str = "caption") -> ray.data.Dataset:
    """The lazy dataset of embeddings of `source` (parquet); `modality` is "image" or "text"."""
    import ray
    from ray.data import ActorPoolStrategy

    from clipray.data.sources import read_parquet, resolve

    if modality not in ("image", "text"):
        raise InvalidInputError(f"modality must be 'image' or 'text', got {modality!r}")
    ds = read_parquet(resolve(source, config.data.endpoint_url), columns=columns)
    state_ref = ray.put(state_dict)
    cls: type[_Embedder] = ImageEmbedder if modality == "image" else TextEmbedder
    kwargs: dict[str, Any] = {"passthrough": passthrough}
    if modality == "text":
        kwargs["text_column"] = text_column
    return ds.map_batches(
        cls,
        fn_constructor_args=(to_dict(config), state_ref),
        fn_constructor_kwargs=kwargs,
        batch_size=options.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=options.actors),
        num_cpus=options.num_cpus,
        num_gpus=options.num_gpus,
    )


def collect(ds: ray.data.Dataset) -> pa.Table:
    """Materialise a (small) embedding dataset on the driver as one Arrow table."""
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    if not tables:
        raise ValueError("the embedding stage produced no rows (every image failed to decode?)")
    return pa.concat_tables(tables)


def embeddings(table: pa.Table) -> np.ndarray:
    col = table.column("embedding").combine_chunks()
    dim = col.type.list_size
    return np.asarray(col.flatten()).reshape(-1, dim)
