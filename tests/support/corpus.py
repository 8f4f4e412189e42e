"""A bad-record corpus mixed into good img2dataset-style shards, with the expected outcome of each row.

Outcome per row: "keep" (converted to RGB and delivered) or the drop reason it must be counted under.
The config that goes with it: `CORPUS_DATA_CONFIG` (min side 16, max aspect ratio 4).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

CORPUS_DATA_CONFIG = {"min_image_side": 16, "max_aspect_ratio": 4.0, "max_caption_chars": 2000}


@dataclass
class Row:
    key: str
    caption: str | bytes | None
    jpg: bytes | None
    outcome: str  # "keep" or a drop reason


def _noise(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    base = rng.integers(0, 255, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR))


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def jpeg(rng: np.random.Generator, w: int = 40, h: int = 32, **kw) -> bytes:
    return _save(Image.fromarray(_noise(rng, w, h)), "JPEG", quality=90, **kw)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int = 12_000) -> bytes:
    """A valid 1-bit grayscale PNG of side x side zeros: ~20 KB on disk, 144 Mpx when decoded."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_huge_header(rng: np.random.Generator, side: int = 30_000) -> bytes:
    """A small JPEG whose SOF marker declares side x side pixels."""
    data = bytearray(jpeg(rng, 16, 16))
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", side, side)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def bad_rows(rng: np.random.Generator) -> list[Row]:
    """One row per case; keys are 'bad-<case>'."""
    good = jpeg(rng, 48, 36)
    rgba = np.dstack([_noise(rng, 40, 40), np.full((40, 40), 128, np.uint8)])
    pal = Image.fromarray(_noise(rng, 40, 40)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    gif_frames = [Image.fromarray(_noise(rng, 40, 30)).convert("P") for _ in range(3)]
    gif = io.BytesIO()
    gif_frames[0].save(gif, format="GIF", save_all=True, append_images=gif_frames[1:], duration=50, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    dup = jpeg(rng, 44, 33)
    cases = [
        # (case, caption, image bytes, outcome)
        ("truncated-jpeg", "a cut off photo", good[: len(good) // 2], "decode_error"),
        ("zero-bytes", "an empty file", b"", "decode_error"),
        ("text-bytes", "html instead of an image", b"<html><body>404 Not Found</body></html>", "decode_error"),
        ("png-bomb", "a decompression bomb", png_bomb(), "too_many_pixels"),
        ("huge-header", "a 30000x30000 header", jpeg_huge_header(rng), "too_many_pixels"),
        ("null-image", "no image at all", None, "null_image"),
        ("png-16bit", "a 16-bit grayscale png",
         _save(Image.fromarray(_noise(rng, 40, 40)[:, :, 0].astype(np.uint16) * 257), "PNG"), "keep"),
        ("cmyk-jpeg", "a cmyk jpeg", _save(Image.fromarray(_noise(rng, 40, 40)).convert("CMYK"), "JPEG"), "keep"),
        ("animated-gif", "an animated gif", gif.getvalue(), "keep"),
        ("palette-transparent", "a palette png with transparency", _save(pal, "PNG"), "keep"),
        ("rgba-png", "an rgba png", _save(Image.fromarray(rgba, "RGBA"), "PNG"), "keep"),
        ("gray-jpeg", "a grayscale jpeg", _save(Image.fromarray(_noise(rng, 40, 40)[:, :, 0], "L"), "JPEG"), "keep"),
        ("progressive-jpeg", "a progressive jpeg", jpeg(rng, 48, 40, progressive=True), "keep"),
        ("png-in-jpg-column", "a png stored as jpg", _save(Image.fromarray(_noise(rng, 40, 40)), "PNG"), "keep"),
        ("exif-rotated", "a rotated photo", jpeg(rng, 48, 32, exif=exif.tobytes()), "keep"),
        ("webp", "a webp image", _save(Image.fromarray(_noise(rng, 40, 40)), "WEBP"), "keep"),
        ("null-caption", None, jpeg(rng), "null_caption"),
        ("long-caption", "word " * 20_000, jpeg(rng), "caption_too_long"),
        ("invalid-utf8", b"\xff\xfe caption \xc3\x28", jpeg(rng), "invalid_caption"),
        ("whitespace-caption", " \t&nbsp;\u200b ", jpeg(rng), "empty_caption"),
        ("html-caption", "a &amp; b &lt;tag&gt;   spaced", jpeg(rng), "keep"),
        ("mojibake-caption", "schÃ¶n cafÃ©", jpeg(rng), "keep"),
        ("too-small", "a thumbnail", jpeg(rng, 12, 12), "too_small"),
        ("too-wide", "a banner", jpeg(rng, 200, 20), "bad_aspect_ratio"),
        ("dup-first", "the original", dup, "keep"),
        ("dup-second", "a re-upload", dup, "duplicate_image"),
    ]
    return [Row(f"bad-{name}", caption, data, outcome) for name, caption, data, outcome in cases]


def good_rows(rng: np.random.Generator, n: int, prefix: str) -> list[Row]:
    words = ["red", "blue", "circle", "square", "photo", "of", "a", "small", "large", "dog", "cat"]
    rows = []
    for i in range(n):
        cap = " ".join(rng.choice(words, size=int(rng.integers(3, 8))))
        rows.append(Row(f"{prefix}-{i:04d}", cap, jpeg(rng, int(rng.integers(32, 64)), int(rng.integers(32, 64))),
                        "keep"))
    return rows


def write_shard(rows: list[Row], path: Path) -> None:
    """img2dataset columns: key, caption (string, raw bytes allowed: invalid UTF-8 kept as is), jpg."""
    caps = pa.array([c.encode() if isinstance(c, str) else c for c in (r.caption for r in rows)], pa.binary())
    caption = pa.Array.from_buffers(pa.string(), len(caps), caps.buffers(), null_count=caps.null_count)
    table = pa.table({
        "key": pa.array([r.key for r in rows], pa.string()),
        "caption": caption,
        "jpg": pa.array([r.jpg for r in rows], pa.binary()),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def write_corpus(out: Path, *, shards: int = 3, good_per_shard: int = 40, seed: int = 0,
                 partitioned: bool = False) -> dict:
    """Good shards with the bad rows spread over them. Returns expected keep keys and drop counts."""
    rng = np.random.default_rng(seed)
    bad = bad_rows(rng)
    # keep the duplicate pair in one shard: duplicates are detected within a file
    pair = [r for r in bad if r.key.startswith("bad-dup")]
    rest = [r for r in bad if not r.key.startswith("bad-dup")]
    all_rows: list[Row] = []
    for s in range(shards):
        rows = good_rows(rng, good_per_shard, f"s{s}")
        mine = rest[s::shards] + (pair if s == 0 else [])
        for r in mine:  # spread through the shard, not only at its end
            rows.insert(int(rng.integers(0, len(rows) + 1)), r)
        sub = f"dt=2026-11-2{s}/" if partitioned else ""
        write_shard(rows, out / f"{sub}{s:05d}.parquet")
        all_rows += rows
    keep = sorted(r.key for r in all_rows if r.outcome == "keep")
    dropped = Counter(r.outcome for r in all_rows if r.outcome != "keep")
    return {"rows": len(all_rows), "keep": keep, "dropped": dict(dropped), "rows_by_key": {r.key: r for r in all_rows}}
