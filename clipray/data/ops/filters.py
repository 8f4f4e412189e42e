"""Row filters: image size/shape, caption length, exact duplicate images within a parquet file.

Each filter is its own registered op with its own drop reasons, so `data.ops` can leave any out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from clipray.data.ops.base import Batch, DropStats, drop_where, op_registry


class ImageFilter:
    """Drops `too_small` (shorter side < min_side) and `bad_aspect_ratio` (long/short > max_aspect)."""

    reads = ("image",)
    writes = ()

    def __init__(self, min_side: int = 0, max_aspect_ratio: float | None = None) -> None:
        self.min_side = min_side
        self.max_aspect_ratio = max_aspect_ratio

    def __call__(self, batch: Batch, stats: DropStats) -> Batch:
        if not self.min_side and self.max_aspect_ratio is None:
            return batch
        sizes = np.array([img.size for img in batch["image"]], dtype=np.float64).reshape(-1, 2)
        short, long = sizes.min(axis=1), sizes.max(axis=1)
        if self.min_side:
            batch = drop_where(batch, short < self.min_side, "too_small", stats)
            keep = short >= self.min_side
            short, long = short[keep], long[keep]
        if self.max_aspect_ratio is not None:
            batch = drop_where(batch, long > self.max_aspect_ratio * short, "bad_aspect_ratio", stats)
        return batch


class CaptionFilter:
    """Drops `caption_too_short` / `caption_too_long` by length in characters after clean-up."""

    reads = ("caption",)
    writes = ()

    def __init__(self, min_chars: int = 1, max_chars: int = 2000) -> None:
        self.min_chars = min_chars
        self.max_chars = max_chars

    def __call__(self, batch: Batch, stats: DropStats) -> Batch:
        lengths = np.array([len(c) for c in batch["caption"]], dtype=np.int64)
        batch = drop_where(batch, lengths < self.min_chars, "caption_too_short", stats)
        lengths = lengths[lengths >= self.min_chars]
        return drop_where(batch, lengths > self.max_chars, "caption_too_long", stats)


# A duplicate index's entries: parquet file -> image hash -> the key that claimed it.
Claims = dict[str, dict[bytes, str]]


def content_hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class DedupIndex:
    """First key seen for each (file, image hash). A Ray actor wraps it when the pipeline runs.

    A row is a duplicate when another key of the same file already claimed its hash. One index
    serves one dataset execution (`clipray.data.stats.PipelineState.open_dedup`): within it, each
    group keeps exactly one row, whichever actor sees which batch first.
    """

    def __init__(self, claims: Claims | None = None) -> None:
        # `claims`: entries of an earlier execution of the same files (see `claims_of`).
        self.first: dict[str, dict[bytes, str]] = {p: dict(m) for p, m in (claims or {}).items()}

    def claim(self, path: str, hashes: Sequence[bytes], keys: Sequence[str]) -> list[bool]:
        """True for each row that is a duplicate of another key of `path`."""
        seen = self.first.setdefault(path, {})
        out = []
        for h, k in zip(hashes, keys, strict=True):
            owner = seen.setdefault(h, k)
            out.append(owner != k)
        return out

    def claim_many(self, groups: dict[str, tuple[list[bytes], list[str]]]) -> dict[str, list[bool]]:
        return {path: self.claim(path, h, k) for path, (h, k) in groups.items()}

    def claims_of(self, keys: Collection[str]) -> Claims:
        """The entries that `keys` own: what a resumed execution of the same files starts from.

        A resumed chunk leaves its consumed rows out before this op; seeded with their entries, the
        index still drops their duplicates, in whatever order the rest arrives. Rows that were not
        consumed need no entry: they come again and claim again, one row per group as before.
        """
        wanted = set(keys)
        out = {p: {h: k for h, k in m.items() if k in wanted} for p, m in self.first.items()}
        return {p: m for p, m in out.items() if m}


class DedupImages:
    """Drops `duplicate_image`: identical image bytes (BLAKE2b) at another key of the same file.

    Runs before decode, so duplicates cost a hash, not a decode. Rows without a `path` column
    (a batch built by hand) count as one file. `attach(dedup=shared)` shares the index across the
    actors of one dataset (a `clipray.data.stats.SharedDedup`); without it the index is local.
    """

    writes = ()

    def __init__(self, image_column: str = "jpg") -> None:
        self.image_column = image_column
        self.reads = (image_column, "key")
        self.index: Any = DedupIndex()

    def attach(self, *, dedup: Any = None, **_: Any) -> None:
        if dedup is not None:
            self.index = dedup  # a clipray.data.stats.SharedDedup

    def __call__(self, batch: Batch, stats: DropStats) -> Batch:
        raw = batch[self.image_column]
        n = len(raw)
        paths = batch.get("path")
        keys = [str(k) for k in batch["key"]] if "key" in batch else [str(i) for i in range(n)]
        groups: dict[str, tuple[list[bytes], list[str]]] = {}
        rows: dict[str, list[int]] = {}
        for i, data in enumerate(raw):
            if data is None or len(data) == 0:
                continue  # decode drops these with their own reason
            p = str(paths[i]) if paths is not None else ""
            g = groups.setdefault(p, ([], []))
            g[0].append(content_hash(bytes(data)))
            g[1].append(keys[i])
            rows.setdefault(p, []).append(i)
        if not groups:
            return batch
        verdict = self.index.claim_many(groups)
        dup = np.zeros(n, dtype=bool)
        for p, idx in rows.items():
            dup[idx] = verdict[p]
        return drop_where(batch, dup, "duplicate_image", stats)


@op_registry.register("dedup_images")
def _dedup(config, *, train: bool) -> DedupImages | _Identity:
    on = config.data.dedup_images and config.data.dedup != "off"
    return DedupImages(config.data.image_column) if on else _Identity()


@op_registry.register("image_filter")
def _image_filter(config, *, train: bool) -> ImageFilter:
    return ImageFilter(config.data.min_image_side, config.data.max_aspect_ratio)


@op_registry.register("caption_filter")
def _caption_filter(config, *, train: bool) -> CaptionFilter:
    return CaptionFilter(config.data.min_caption_chars, config.data.max_caption_chars)


class _Identity:
    reads = ()
    writes = ()

    def __call__(self, batch: Batch, stats: DropStats) -> Batch:
        return batch
