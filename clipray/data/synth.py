"""Synthetic image/alt-text data in the img2dataset parquet layout.

Images hold 1-3 objects with a colour, a shape, a size and a position over a textured
background; captions describe them in varied wording. The content is compositional and
learnable, so a small model trained on it learns real image-text alignment, and the labelled
evaluation split (one object per image, class = "<colour> <shape>") measures zero-shot
classification on images the model never saw. Everything is a pure function of the seed.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from clipray.errors import InvalidInputError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 170),
    "orange": (245, 140, 20),
}
SHAPES = ("circle", "square", "triangle", "cross")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (235, 235, 230),
    "gray": (128, 128, 128),
    "dark": (35, 35, 40),
    "beige": (215, 200, 170),
    "teal": (60, 120, 120),
}
POSITIONS = {"left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3), "bottom": (0.5, 0.7), "center": (0.5, 0.5)}
NUMBERS = {1: "one", 2: "two", 3: "three"}
# Object radius as a fraction of the shorter image side. Even a small object spans about 14 px
# at the demo's 48 px input (close to 2 ViT patches of 8 px), so its outline, not only its colour,
# is visible to a small model.
RADIUS = {"large": (0.24, 0.29), "small": (0.15, 0.18)}
OBJECT_COUNT_P = (0.8, 0.15, 0.05)  # images with 1, 2, 3 objects
# Share of single-object captions that add size, background or position to colour and shape.
# Each detail a caption names is one more thing that separates it from the other captions of a
# batch; a small model learns those (global, easy) cues before shapes, so most captions keep to
# what the evaluation asks about.
DETAIL_P = 0.25

EVAL_TEMPLATES = ["a photo of a {}.", "a {}.", "an image of a {}.", "a picture of a {}."]
CLASSES = [f"{c} {s}" for c in COLOURS for s in SHAPES]


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    size: str  # "small" | "large"
    position: str


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _background(rng: np.random.Generator, w: int, h: int, name: str) -> np.ndarray:
    base = np.array(BACKGROUNDS[name], dtype=np.float32)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(angle) * gx / w + np.sin(angle) * gy / h) * rng.uniform(10, 40)
    noise = rng.normal(0, 6, size=(h, w, 1))
    img = base + ramp[..., None] + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, w: int, h: int, rng: np.random.Generator) -> None:
    side = min(w, h)
    r = side * rng.uniform(*RADIUS[obj.size])
    px, py = POSITIONS[obj.position]
    cx = px * w + rng.uniform(-0.06, 0.06) * w
    cy = py * h + rng.uniform(-0.06, 0.06) * h
    jitter = rng.integers(-20, 21, size=3)
    fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[obj.colour], jitter))
    box = (cx - r, cy - r, cx + r, cy + r)
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        draw.rectangle(box, fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    else:  # cross
        t = r * 0.38
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)


def render(objs: list[Obj], background: str, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    img = Image.fromarray(_background(rng, w, h, background))
    draw = ImageDraw.Draw(img)
    for obj in objs:
        _draw(draw, obj, w, h, rng)
    return img


def _pick(rng: np.random.Generator, seq: list[str] | tuple[str, ...]) -> str:
    return seq[int(rng.integers(len(seq)))]


def caption(objs: list[Obj], background: str, rng: np.random.Generator) -> str:
    """One of several wordings; colour and shape are always named, the rest sometimes."""
    if len(objs) == 1:
        o = objs[0]
        plain = [
            "a {colour} {shape}",
            "a photo of a {colour} {shape}",
            "an image showing one {colour} {shape}",
            "a picture of a {shape} that is {colour}",
            "{colour} {shape}",
            "a drawing of a {colour} {shape}",
            "the {shape} is {colour}",
            "one {colour} {shape}",
        ]
        detailed = [
            "a {size} {colour} {shape}",
            "a {colour} {shape} on a {bg} background",
            "{colour} {shape} in the {pos}",
            "there is a {size} {colour} {shape} near the {pos}",
            "{size} {colour} {shape}, {bg} background",
        ]
        templates = detailed if rng.random() < DETAIL_P else plain
        return _pick(rng, templates).format(
            size=o.size, colour=o.colour, shape=o.shape, bg=background, pos=o.position
        )
    kinds = {(o.colour, o.shape) for o in objs}
    if len(kinds) == 1:
        o = objs[0]
        n = NUMBERS[len(objs)]
        templates = ["{n} {colour} {shapes}", "a photo of {n} {colour} {shapes}", "{n} {shapes}, all {colour}",
                     "{n} {colour} {shapes} on a {bg} background"]
        return _pick(rng, templates).format(n=n, colour=o.colour, shapes=_plural(o.shape), bg=background)
    parts = [f"a {o.colour} {o.shape}" for o in objs]
    joined = ", ".join(parts[:-1]) + " and " + parts[-1]
    templates = ["{j}", "a photo of {j}", "{j} on a {bg} background", "{n} shapes: {j}"]
    return _pick(rng, templates).format(j=joined, bg=background, n=NUMBERS[len(objs)])


def _sample_objects(rng: np.random.Generator) -> list[Obj]:
    count = int(rng.choice([1, 2, 3], p=list(OBJECT_COUNT_P)))
    positions = list(rng.permutation(list(POSITIONS))[:count])
    if count > 1 and rng.random() < 0.4:  # several of the same kind, to teach counting
        colour, shape = _pick(rng, list(COLOURS)), _pick(rng, SHAPES)
        return [Obj(colour, shape, "small", p) for p in positions]
    return [Obj(_pick(rng, list(COLOURS)), _pick(rng, SHAPES), _pick(rng, ["small", "large"]), p)
            for p in positions]


def _jpeg(img: Image.Image, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(80, 96)))
    return buf.getvalue()


def _size(rng: np.random.Generator, image_size: int) -> tuple[int, int]:
    short = int(image_size * rng.uniform(1.0, 1.5))
    long = int(short * rng.uniform(1.0, 1.33))
    return (long, short) if rng.random() < 0.5 else (short, long)


BAD_ROW_KINDS = ("corrupt_jpeg", "empty_caption", "null_image")


def make_train_rows(n: int, seed: int, image_size: int = 64, bad_rows: int = 0) -> pa.Table:
    """`n` training rows; the first `bad_rows` (spread over the shards later) are broken on purpose."""
    rng = np.random.default_rng([seed, 0])
    keys, caps, jpgs, widths, heights, urls = [], [], [], [], [], []
    for i in range(n):
        objs = _sample_objects(rng)
        bg = _pick(rng, list(BACKGROUNDS))
        w, h = _size(rng, image_size)
        data: bytes | None = _jpeg(render(objs, bg, w, h, rng), rng)
        text = caption(objs, bg, rng)
        if i < bad_rows:
            kind = BAD_ROW_KINDS[i % len(BAD_ROW_KINDS)]
            if kind == "corrupt_jpeg":
                assert data is not None
                data = data[: len(data) // 3]  # truncated mid-scan
            elif kind == "empty_caption":
                text = " \u200b&nbsp;\t"  # nothing left after clean-up
            else:
                data = None
        keys.append(f"{i:09d}")
        caps.append(text)
        jpgs.append(data)
        widths.append(w)
        heights.append(h)
        urls.append(f"synth://{seed}/{i:09d}.jpg")
    return pa.table({
        "key": keys, "url": urls, "caption": caps,
        "jpg": pa.array(jpgs, type=pa.binary()),
        "width": pa.array(widths, pa.int32()), "height": pa.array(heights, pa.int32()),
        "status": ["success"] * n,
    })


def make_eval_rows(per_class: int, seed: int, image_size: int = 64) -> pa.Table:
    """Single-object images, `per_class` for each of the colour-shape classes."""
    rng = np.random.default_rng([seed, 1])
    keys, labels, names, jpgs = [], [], [], []
    for label, name in enumerate(CLASSES):
        colour, shape = name.split()
        for j in range(per_class):
            obj = Obj(colour, shape, _pick(rng, ["small", "large"]), _pick(rng, list(POSITIONS)))
            bg = _pick(rng, list(BACKGROUNDS))
            w, h = _size(rng, image_size)
            jpgs.append(_jpeg(render([obj], bg, w, h, rng), rng))
            keys.append(f"eval-{label:02d}-{j:04d}")
            labels.append(label)
            names.append(name)
    return pa.table({"key": keys, "label": pa.array(labels, pa.int32()), "caption": names,
                     "jpg": pa.array(jpgs, type=pa.binary())})


def write_synthetic(out: str | Path, rows: int, *, shards: int = 4, seed: int = 0, image_size: int = 64,
                    eval_per_class: int = 20, bad_rows: int = 0) -> dict[str, object]:
    """Write `out/train/part-*.parquet`, `out/eval/part-0.parquet` and `out/eval/classes.json`."""
    out = Path(out)
    if rows <= 0 or shards <= 0:
        raise InvalidInputError("rows and shards must be positive")
    train = make_train_rows(rows, seed, image_size, bad_rows)
    # Bad rows were generated first; spread them so every shard mixes good and bad rows.
    order = np.random.default_rng([seed, 2]).permutation(rows)
    train = train.take(pa.array(order))
    (out / "train").mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, rows, shards + 1).astype(int)
    for s in range(shards):
        pq.write_table(train.slice(bounds[s], bounds[s + 1] - bounds[s]), out / "train" / f"part-{s:05d}.parquet",
                       row_group_size=256)
    ev = make_eval_rows(eval_per_class, seed, image_size)
    (out / "eval").mkdir(parents=True, exist_ok=True)
    pq.write_table(ev, out / "eval" / "part-00000.parquet")
    # Per-class attributes: evaluation reports top-1 by colour and by shape beside the 24-way top-1.
    attributes = {"colour": [c.split()[0] for c in CLASSES], "shape": [c.split()[1] for c in CLASSES]}
    meta = {"classes": CLASSES, "templates": EVAL_TEMPLATES, "attributes": attributes}
    (out / "eval" / "classes.json").write_text(json.dumps(meta, indent=1))
    return {"train_rows": rows, "bad_rows": bad_rows, "shards": shards, "eval_rows": ev.num_rows,
            "classes": len(CLASSES), "path": str(out)}
