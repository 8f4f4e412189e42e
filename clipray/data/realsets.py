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

from clipray.errors import InvalidInputError
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
