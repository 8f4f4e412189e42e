"""Decode encoded image bytes to RGB PIL images; undecodable rows are dropped and counted."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

from clipray.data.ops.base import Batch, DropStats, drop_where, op_registry

# Truncated files must fail, never decode partly.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DecodeImages:
    """`image_column` bytes -> `image` (RGB PIL images, EXIF orientation applied).

    Drops: `null_image` (missing bytes), `decode_error` (corrupt or truncated data),
    `too_many_pixels` (header declares more than `max_pixels`; never decoded).
    """

    writes = ("image",)

    def __init__(self, image_column: str = "jpg", max_pixels: int = 100_000_000, target_size: int | None = None):
        self.image_column = image_column
        self.reads = (image_column,)
        self.max_pixels = max_pixels
        self.target_size = target_size

    def decode_one(self, data: bytes) -> Image.Image:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > self.max_pixels:
                raise _TooLarge(f"{w}x{h}")
            if self.target_size and img.format == "JPEG":
                # DCT-domain downscale: only engages when the short side is >= 2x the target.
                img.draft("RGB", (self.target_size, self.target_size))
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                img = _to_rgb(img)
            return img

    def __call__(self, batch: Batch, stats: DropStats) -> Batch:
        raw = batch[self.image_column]
        images: list[Image.Image | None] = []
        reason = np.zeros(len(raw), dtype=np.int8)  # 0 ok, 1 null, 2 corrupt, 3 too large
        for i, data in enumerate(raw):
            if data is None:
                images.append(None)
                reason[i] = 1
                continue
            try:
                images.append(self.decode_one(data))
            except _TooLarge:
                images.append(None)
                reason[i] = 3
            except Exception:  # PIL raises many types for bad data; all mean "not an image"
                images.append(None)
                reason[i] = 2
        batch = dict(batch)
        del batch[self.image_column]  # bytes are not needed downstream
        batch["image"] = images
        for code, name in ((1, "null_image"), (2, "decode_error"), (3, "too_many_pixels")):
            batch = drop_where(batch, reason == code, name, stats)
            reason = reason[reason != code]
        return batch


class _TooLarge(Exception):
    pass


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


@op_registry.register("decode")
def _decode(config, *, train: bool) -> DecodeImages:
    return DecodeImages(config.data.image_column, config.data.max_image_pixels, config.model.vision.image_size)
