"""Planted near-duplicates: altered copies of real images, for tests, tuning and the benchmark.

A copy is the image re-encoded at another JPEG quality, resized (0.5x-2x), cropped (up to 5% of
each side's length in all) and re-lit (brightness +-10%), one of these or all together; the
kinds a web crawl finds of one picture. The alteration is drawn from a seeded generator, so a
planted dataset is the same on every run.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

KINDS = ("reencode", "resize", "crop", "brightness", "all")


def alter(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """An altered copy of the encoded image `data` (returned as JPEG bytes)."""
    if kind not in KINDS:
        raise ValueError(f"unknown alteration {kind!r}; one of {', '.join(KINDS)}")
    with Image.open(io.BytesIO(data)) as im:
        img = im.convert("RGB")
    quality = 90
    if kind in ("reencode", "all"):
        quality = int(rng.integers(30, 96))
    if kind in ("crop", "all"):
        w, h = img.size
        cut_w, cut_h = round(w * rng.uniform(0.0, 0.05)), round(h * rng.uniform(0.0, 0.05))
        left, top = int(rng.integers(0, cut_w + 1)), int(rng.integers(0, cut_h + 1))
        img = img.crop((left, top, w - (cut_w - left), h - (cut_h - top)))
    if kind in ("resize", "all"):
        scale = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        w, h = img.size
        img = img.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.Resampling.BICUBIC)
    if kind in ("brightness", "all"):
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.9, 1.1)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass(frozen=True)
class PlantedQuality:
    """How a near-duplicate pass did on planted groups (an original and its altered copies)."""

    copies: int  # planted copies
    removed: int  # copies removed (a group of 1 + c rows left with k >= 1 rows lost c - (k - 1))
    groups: int
    exactly_one: int  # groups left with exactly one row
    none: int  # groups left with no row: their picture was lost to a row outside the group
    distinct: int  # distinct images: originals outside any group, plus one per group
    distinct_removed: int  # distinct originals removed, plus the groups left with none

    def line(self) -> str:
        return (f"planted copies removed {self.removed}/{self.copies} ({self.removed / max(self.copies, 1):.3f}); "
                f"groups left with exactly one row {self.exactly_one}/{self.groups}, with none {self.none}; "
                f"distinct images removed {self.distinct_removed}/{self.distinct} "
                f"({self.distinct_removed / max(self.distinct, 1):.3f})")


def planted_quality(groups: dict[str, list[str]], distinct: Iterable[str], kept: set[str]) -> PlantedQuality:
    """`groups`: original key -> copy keys; `distinct`: keys of originals outside any group that
    reached the pass; `kept`: the keys the pass kept."""
    left = {o: sum(k in kept for k in [o, *cs]) for o, cs in groups.items()}
    distinct = list(distinct)
    return PlantedQuality(
        copies=sum(len(cs) for cs in groups.values()),
        removed=sum(len(cs) - max(left[o] - 1, 0) for o, cs in groups.items()),
        groups=len(groups), exactly_one=sum(n == 1 for n in left.values()), none=sum(n == 0 for n in left.values()),
        distinct=len(distinct) + len(groups),
        distinct_removed=sum(k not in kept for k in distinct) + sum(n == 0 for n in left.values()))
