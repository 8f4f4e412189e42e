"""Deterministic CLIP weights and inputs from a seed, with NumPy only.

Used on both sides of the open_clip golden test: `make_openclip_golden.py` (run in a reference
environment that has open_clip) and `tests/unit/test_openai_checkpoint.py` (clipray's environment).
Each tensor is drawn from its own generator seeded by (seed, crc32(key)), in float64 then cast to
float32, so the values do not depend on dict order, NumPy's float32 sampling path or torch.
"""

from __future__ import annotations

import zlib

import numpy as np


def tensor_for(key: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    leaf = key.rsplit(".", 1)[-1]
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    if key == "logit_scale":
        return np.full(shape, np.log(1 / 0.07), dtype=np.float32)
    if leaf == "running_var":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if leaf == "running_mean" or leaf == "bias" or leaf.endswith("_bias"):
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)
    if len(shape) == 1 and ("ln" in key or "bn" in key):  # norm gains
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if key in ("text_projection", "visual.proj"):  # [in, out], used as x @ P
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def seeded_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    return {k: tensor_for(k, tuple(s), seed) for k, s in shapes.items()}


def seeded_inputs(seed: int, n_images: int, image_size: int, context_length: int, vocab_size: int,
                  text_lengths: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, S, S) float32 ~ normalised pixels; token ids (T, L) int64 with SOT ... EOT, 0-padded."""
    rng = np.random.default_rng([seed, 1])
    images = rng.standard_normal((n_images, 3, image_size, image_size)).astype(np.float32)
    ids = np.zeros((len(text_lengths), context_length), dtype=np.int64)
    for i, n in enumerate(text_lengths):
        ids[i, 0] = vocab_size - 2
        ids[i, 1 : 1 + n] = rng.integers(1, vocab_size - 2, n)
        ids[i, 1 + n] = vocab_size - 1
    return images, ids
