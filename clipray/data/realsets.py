"""Real images that ship inside registry packages, written in the img2dataset parquet layout.

`digits`: scikit-learn's 1,797 handwritten 8x8 digits (UCI optdigits, `sklearn.datasets.load_digits`;
no download). The images are upsampled to `image_size` (bilinear), white ink on black, stored as
PNG. A stratified held-out split becomes the evaluation set:
  train/part-*.parquet   key, caption, jpg, label  (captions from the label, varied wording)
  eval/part-00000.parquet key, caption, jpg, label (caption = "a photo of the number seven")
  eval/classes.json      {"classes": ["zero", ...], "templates": [...]}
so the same files give a 10-way zero-shot task and a text<->image retrieval task.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from clipray.errors import InvalidInputError, MissingFileError
from clipray.registry import Registry

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TRAIN_TEMPLATES = ["a photo of the number {w}", "the digit {w}", "a handwritten {w}", "{w}",
                   "a picture of a {d}", "the number {d}, handwritten", "an image of the digit {w}",
                   "a scanned {w}", "handwritten digit {d}"]
EVAL_TEMPLATES = ["a photo of the number {}.", "the digit {}.", "a handwritten {}."]

realset_registry: Registry[Callable[..., dict[str, Any]]] = Registry("real-image set")


def _png(pixels: np.ndarray, size: int) -> bytes:
    img = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write(table: pa.Table, directory: Path, shards: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, shards + 1).astype(int)
    for s in range(shards):
        pq.write_table(table.slice(bounds[s], bounds[s + 1] - bounds[s]), directory / f"part-{s:05d}.parquet")


@realset_registry.register("digits")
def write_digits(out: str | Path, *, image_size: int = 32, eval_fraction: float = 0.25, seed: int = 0,
                 shards: int = 2) -> dict[str, Any]:
    """scikit-learn digits -> `out/train`, `out/eval` (held out, stratified) and `out/eval/classes.json`."""
    from sklearn.datasets import load_digits

    if not 0 < eval_fraction < 1:
        raise InvalidInputError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    digits = load_digits()
    pixels = (np.asarray(digits.images) * (255.0 / 16.0)).round().astype(np.uint8)  # values 0..16 -> 0..255
    labels = np.asarray(digits.target, dtype=np.int32)
    rng = np.random.default_rng(seed)
    is_eval = np.zeros(len(labels), dtype=bool)
    for c in range(10):  # stratified: the same share of every class is held out
        idx = rng.permutation(np.flatnonzero(labels == c))
        is_eval[idx[: round(len(idx) * eval_fraction)]] = True
    out = Path(out)

    def table(idx: np.ndarray, captions: list[str]) -> pa.Table:
        return pa.table({"key": [f"digits-{i:05d}" for i in idx], "caption": captions,
                         "jpg": pa.array([_png(pixels[i], image_size) for i in idx], type=pa.binary()),
                         "label": pa.array(labels[idx], pa.int32())})

    train_idx = rng.permutation(np.flatnonzero(~is_eval))
    picks = rng.integers(len(TRAIN_TEMPLATES), size=len(train_idx))
    train = table(train_idx, [TRAIN_TEMPLATES[t].format(w=WORDS[labels[i]], d=labels[i])
                              for i, t in zip(train_idx, picks)])
    _write(train, out / "train", shards)
    eval_idx = np.flatnonzero(is_eval)
    _write(table(eval_idx, [f"a photo of the number {WORDS[labels[i]]}" for i in eval_idx]), out / "eval", 1)
    (out / "eval" / "classes.json").write_text(json.dumps({"classes": WORDS, "templates": EVAL_TEMPLATES}, indent=1))
    return {"set": "digits", "train_rows": train.num_rows, "eval_rows": int(is_eval.sum()), "classes": 10,
            "path": str(out)}


def write_realset(name: str, out: str | Path, **kwargs: Any) -> dict[str, Any]:
    return realset_registry.get(name)(out, **kwargs)


# Debian's `openclipart-png` (scripts/install-system-deps.sh installs it): about 8,300 clip-art
# PNGs in category folders (animals/birds/..., food/, transportation/, ...).
OPENCLIPART_ROOT = "/usr/share/openclipart/png"
# Folders that name no kind of thing: kept for training, never an evaluation class.
OPENCLIPART_NOT_CLASSES = frozenset({"unsorted", "special"})
OPENCLIPART_TEMPLATES = ["a clip art of {}.", "a drawing of {}.", "an illustration of {}."]


def _title(stem: str) -> str:
    """File name -> words: `armadillo_architetto_fra_01` -> `armadillo architetto fra` (the
    package's names are title plus truncated author; neither part can be told apart reliably)."""
    import re

    words = re.sub(r"[_\-.]+", " ", stem).split()
    while words and (words[-1].isdigit() or re.fullmatch(r"\d+|r|\d*[a-z]?\d+", words[-1])):
        words.pop()  # trailing version numbers (`_01`, `clem1` stays: it is a word)
    return " ".join(words) or stem


# A few of the package's PNGs declare hundreds of megapixels (one 623 M): decoding one takes
# gigabytes; they are left out and counted.
OPENCLIPART_MAX_PIXELS = 40_000_000


def _flatten_to_jpeg(path: str, max_side: int, quality: int = 90) -> tuple[bytes, int, int] | None:
    """A PNG (palette, grey, alpha) as an RGB JPEG over white, longer side at most `max_side`;
    None for an image over OPENCLIPART_MAX_PIXELS."""
    Image.MAX_IMAGE_PIXELS = None  # checked here instead, before decoding
    with Image.open(path) as im:
        if im.width * im.height > OPENCLIPART_MAX_PIXELS:
            return None
        im.load()
        rgba = im.convert("RGBA")
    if max(rgba.size) > max_side:
        rgba.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64)
    grey = np.asarray(rgba.convert("L"), dtype=np.float64)
    # White art (drawn for a dark page) would vanish on white: such images get a black page.
    light = alpha.sum() > 0 and (grey * alpha).sum() / alpha.sum() > 225
    canvas = Image.new("RGB", rgba.size, (0, 0, 0) if light else (255, 255, 255))
    canvas.paste(rgba, mask=rgba.getchannel("A"))  # transparent pixels carry arbitrary colours
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), canvas.width, canvas.height


def _category_name(folder: str) -> str:
    return folder.replace("_", " ")


@realset_registry.register("openclipart")
def write_openclipart(out: str | Path, *, image_size: int = 256, eval_per_class: int = 10, seed: int = 0,
                      shards: int = 4, max_rows: int | None = None, root: str = OPENCLIPART_ROOT,
                      min_class_images: int = 20) -> dict[str, Any]:
    """openclipart-png -> `out/train` (captions from titles and category folders), `out/eval`
    (`eval_per_class` held-out images of each top-level category with at least
    `min_class_images` images, label = class index) and `out/eval/classes.json`.

    `max_rows`: a seeded sample of that many images (train + eval) instead of all of them.
    Rows carry `key, caption, jpg (JPEG bytes), width, height, category` (+ `label` in eval).
    """
    import os
    from concurrent.futures import ProcessPoolExecutor

    if not os.path.isdir(root):
        raise MissingFileError(f"{root} does not exist: install Debian's openclipart-png "
                                f"(apt-get install openclipart-png, or scripts/install-system-deps.sh)")
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names if f.endswith(".png"))
    rng = np.random.default_rng(seed)
    if max_rows is not None and max_rows < len(files):
        files = sorted(rng.choice(files, size=max_rows, replace=False).tolist())
    with ProcessPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        converted = list(pool.map(_flatten_to_jpeg, files, [image_size] * len(files), chunksize=16))
    skipped = sum(c is None for c in converted)
    encoded = [c for c in converted if c is not None]
    files = [f for f, c in zip(files, converted) if c is not None]
    rel = [os.path.relpath(f, root).split(os.sep) for f in files]
    category = [parts[0] for parts in rel]
    counts: dict[str, int] = {}
    for c in category:
        counts[c] = counts.get(c, 0) + 1
    classes = sorted(c for c, n in counts.items() if n >= min_class_images and c not in OPENCLIPART_NOT_CLASSES)
    is_eval = np.zeros(len(files), dtype=bool)
    for c in classes:  # the same number held out of every class (balanced zero-shot)
        idx = rng.permutation([i for i, cat in enumerate(category) if cat == c])
        is_eval[idx[:eval_per_class]] = True
    out = Path(out)

    def caption(i: Any) -> str:
        kinds = [_category_name(p) for p in rel[i][:-1]]
        return f"{_title(Path(files[i]).stem)}, clip art of {' / '.join(reversed(kinds))}"

    def table(idx: np.ndarray, captions: list[str], labels: list[int] | None = None) -> pa.Table:
        cols: dict[str, Any] = {
            "key": [f"openclipart-{i:05d}" for i in idx], "caption": captions,
            "jpg": pa.array([encoded[i][0] for i in idx], type=pa.binary()),
            "width": pa.array([encoded[i][1] for i in idx], pa.int32()),
            "height": pa.array([encoded[i][2] for i in idx], pa.int32()),
            "category": [category[i] for i in idx]}
        if labels is not None:
            cols["label"] = pa.array(labels, pa.int32())
        return pa.table(cols)

    train_idx = np.flatnonzero(~is_eval)
    train = table(train_idx, [caption(i) for i in train_idx])
    _write(train, out / "train", max(1, min(shards, train.num_rows)))
    eval_idx = np.flatnonzero(is_eval)
    names = [_category_name(c) for c in classes]
    _write(table(eval_idx, [f"a clip art of {_category_name(category[i])}" for i in eval_idx],
                 [classes.index(category[i]) for i in eval_idx]), out / "eval", 1)
    (out / "eval" / "classes.json").write_text(json.dumps({"classes": names, "templates": OPENCLIPART_TEMPLATES},
                                                          indent=1))
    return {"set": "openclipart", "train_rows": train.num_rows, "eval_rows": int(is_eval.sum()),
            "classes": len(classes), "skipped_huge": skipped, "path": str(out)}
