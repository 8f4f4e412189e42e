"""What a trained dual encoder reads, built from its pipeline config, and embedding with it.

- images: the training pipeline's own `decode` and `image_transform` ops in evaluation mode
  (resize + centre crop) -> uint8 (N, S, S, 3); normalised on the model's device;
- text: token ids or CLIPPO-rendered, normalised pixels, as `text_encoding.kind` chooses
  (`clipray.text.encoding`), exactly as in training.

Every in-process user embeds through `embed_images` / `embed_texts`: the evaluation
(`clipray.eval.suite.evaluate`), the logged MLflow model (`clipray.tracking.model`) and the
evaluation plots. Ray Data stages (`clipray.eval.embed`) build the same ops per actor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from clipray.models.common.image import to_model_input

if TYPE_CHECKING:
    from clipray.config import PipelineConfig

TextInput = Callable[[list[str]], torch.Tensor]  # strings -> what the text tower reads


def text_input(config: PipelineConfig) -> TextInput:
    """Strings -> the text tower's input, as `text_encoding.kind` chooses: token ids, or captions
    rendered as images (CLIPPO) and normalised like the photos. The encoder is built once."""
    from clipray.models.common.image import text_tower_input
    from clipray.text.encoding import text_encoding

    encoding = text_encoding(config)
    encode = encoding.encoder()
    return lambda texts: text_tower_input(encoding, torch.from_numpy(encode(texts)), config.image.mean,
                                          config.image.std)


def decode_images(config: PipelineConfig, batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """`batch` (encoded images in `data.image_column`, other columns kept row-aligned) through
    the evaluation image ops; returns the batch with uint8 `image` and the drops by reason."""
    from clipray.data.ops.base import CountingStats
    from clipray.data.pipeline import build_ops

    counts = CountingStats()
    for op in build_ops(config, train=False, names=("decode", "image_transform")):
        batch = op(batch, counts)
    return batch, dict(counts.dropped)


def image_pixels(config: PipelineConfig, encoded: Sequence[bytes], what: str = "images") -> np.ndarray:
    """Encoded images -> uint8 (N, S, S, 3); any image that cannot be decoded is an error."""
    from clipray.errors import InvalidInputError

    batch, dropped = decode_images(config, {"key": np.arange(len(encoded)).astype(str),
                                            config.data.image_column: list(encoded)})
    if dropped:
        raise InvalidInputError(f"{what}: images that cannot be decoded: {dropped}")
    return np.asarray(batch["image"])


@torch.no_grad()
def embed_images(model: Any, pixels: np.ndarray, config: PipelineConfig, device: torch.device | str = "cpu",
                 batch_size: int = 256) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> L2-normalised image embeddings (N, D), float32 on `device`."""
    out = []
    for i in range(0, len(pixels), batch_size):
        x = to_model_input(torch.from_numpy(np.ascontiguousarray(pixels[i : i + batch_size])).to(device),
                           config.image.mean, config.image.std)
        out.append(F.normalize(model.encode_image(x).float(), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def embed_texts(model: Any, texts: Sequence[str], to_input: TextInput, device: torch.device | str = "cpu",
                batch_size: int = 256) -> torch.Tensor:
    """Strings -> L2-normalised text embeddings (N, D), float32 on `device`."""
    out = []
    texts = list(texts)
    for i in range(0, len(texts), batch_size):
        inputs = to_input(texts[i : i + batch_size]).to(device)
        out.append(F.normalize(model.encode_text(inputs).float(), dim=-1))
    return torch.cat(out)
