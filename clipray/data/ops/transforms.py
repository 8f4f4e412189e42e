"""Crop/resize PIL images to the model's square input, as uint8 HWC arrays.

Images stay uint8 through Ray Data (4x smaller than float32); normalisation happens on the
training device.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
from PIL import Image

from clipray.data.ops.base import Batch, DropStats, op_registry


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """Evaluation transform: shorter side to `size` (bicubic), then a centre crop."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def random_crop_box(w: int, h: int, scale: tuple[float, float], rng: np.random.Generator,
                    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int] | None:
    """torchvision's RandomResizedCrop box (left, top, right, bottom): area in `scale`, aspect in
    `ratio`, 10 tries; None when no try fits (the caller falls back to a centre crop)."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return left, top, left + cw, top + ch
    return None


def random_resized_crop(img: Image.Image, size: int, scale: tuple[float, float], rng: np.random.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """Training transform: a random area/aspect crop resized to `size` (as torchvision's RRC)."""
    box = random_crop_box(*img.size, scale, rng, ratio)
    if box is None:
        return resize_center_crop(img, size)
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0))


class ImageTransform:
    """`image` (PIL) -> `image` uint8 (N, size, size, 3)."""

    reads = ("image",)
    writes = ("image",)

    def __init__(self, size: int, *, train: bool, scale: tuple[float, float] = (0.9, 1.0), seed: int = 0):
        self.size = size
        self.train = train
        self.scale = scale
        self.seed = seed

    def __call__(self, batch: Batch, stats: DropStats) -> Batch:
        images = batch["image"]
        # Augmentation is a function of the seed and the batch's first key: reproducible, yet
        # different for every batch whichever actor runs it.
        first = str(batch["key"][0]) if "key" in batch and len(images) else ""
        rng = np.random.default_rng([self.seed, zlib.crc32(first.encode())])
        out = np.empty((len(images), self.size, self.size, 3), dtype=np.uint8)
        for i, img in enumerate(images):
            if self.train:
                out[i] = random_resized_crop(img, self.size, self.scale, rng)
            else:
                out[i] = resize_center_crop(img, self.size)
        batch = dict(batch)
        batch["image"] = out
        return batch


@op_registry.register("image_transform")
def _transform(config, *, train: bool) -> ImageTransform:
    return ImageTransform(config.model.vision.image_size, train=train, scale=config.image.train_crop_scale,
                          seed=config.train.seed)
