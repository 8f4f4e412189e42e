"""A labelled curation dataset from real clip art: openclipart rows plus planted altered copies.

`build(out)` writes `out/train` (originals + planted copies, LAION-like `punsafe`) and
`out/eval` (the held-out openclipart evaluation split) and returns what a correct curation must
find: the planted groups (original key -> copy keys), the keys of training rows that copy an
evaluation image, and the keys a `punsafe < 0.5` predicate must drop.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipray.data.curate.plant import KINDS, alter
from clipray.data.realsets import write_openclipart


@dataclass
class Planted:
    root: Path
    originals: list[str]  # keys of the openclipart training rows
    groups: dict[str, list[str]]  # original key -> keys of its planted copies
    eval_copies: list[str]  # training rows that are altered copies of evaluation images
    unsafe: list[str]  # rows with punsafe >= 0.5 (originals not in any planted group, nor copied)

    @property
    def train(self) -> str:
        return str(self.root / "train")

    @property
    def eval(self) -> str:
        return str(self.root / "eval")


def build(out: Path, *, rows: int = 600, planted_groups: int = 80, eval_copies: int = 12, unsafe: int = 15,
          image_size: int = 128, seed: int = 0, min_side: int = 48) -> Planted:
    write_openclipart(out / "src", max_rows=rows, image_size=image_size, eval_per_class=3, seed=seed, shards=1)
    train = pq.read_table(out / "src" / "train")
    ev = pq.read_table(out / "src" / "eval" / "part-00000.parquet")
    # The package holds some images twice (one drawing in two folders): a training row identical
    # to an evaluation image would be a true overlap nobody planted. Leave those out, and keep
    # originals large enough that a 0.5x copy is still a picture (web images, not 16 px icons).
    # Identical training rows (the same drawing in two folders) go too: exact duplicates are
    # another stage's business, and which copy that stage keeps depends on the order of arrival.
    seen = {hashlib.md5(b).digest() for b in ev.column("jpg").to_pylist()}
    keep = []
    for b, w, h in zip(train.column("jpg").to_pylist(), train.column("width").to_pylist(),
                       train.column("height").to_pylist()):
        digest = hashlib.md5(b).digest()
        keep.append(digest not in seen and min(w, h) >= min_side)
        seen.add(digest)
    train = train.filter(pa.array(keep))
    rng = np.random.default_rng(seed)
    keys = train.column("key").to_pylist()
    jpg = train.column("jpg").to_pylist()
    captions = train.column("caption").to_pylist()
    order = rng.permutation(len(keys))
    group_idx, unsafe_idx = order[:planted_groups], order[planted_groups:planted_groups + unsafe]
    new: dict[str, list] = {"key": [], "caption": [], "jpg": []}
    groups: dict[str, list[str]] = {}
    for n, i in enumerate(group_idx):
        copies = []
        for c in range(1 + n % 2):  # one or two copies per group
            kind = KINDS[(n + c) % len(KINDS)]
            key = f"plant-{n:04d}-{c}-{kind}"
            new["key"].append(key)
            new["caption"].append(captions[i])
            new["jpg"].append(alter(jpg[i], kind, rng))
            copies.append(key)
        groups[keys[i]] = copies
    ev_jpg, ev_cap = ev.column("jpg").to_pylist(), ev.column("caption").to_pylist()
    eval_keys = []
    for n, i in enumerate(rng.choice(len(ev_jpg), size=eval_copies, replace=False)):
        key = f"evalcopy-{n:04d}-{KINDS[n % len(KINDS)]}"
        new["key"].append(key)
        new["caption"].append(ev_cap[i])
        new["jpg"].append(alter(ev_jpg[i], KINDS[n % len(KINDS)], rng))
        eval_keys.append(key)
    from PIL import Image

    sizes = [Image.open(io.BytesIO(b)).size for b in new["jpg"]]
    planted = pa.table({"key": new["key"], "caption": new["caption"], "jpg": pa.array(new["jpg"], pa.binary()),
                        "width": pa.array([s[0] for s in sizes], pa.int32()),
                        "height": pa.array([s[1] for s in sizes], pa.int32()),
                        "category": ["planted"] * len(sizes)})
    punsafe = np.full(len(keys), 0.05)
    punsafe[unsafe_idx] = 0.9
    train = train.append_column("punsafe", pa.array(punsafe))
    planted = planted.append_column("punsafe", pa.array(np.full(planted.num_rows, 0.05)))
    both = pa.concat_tables([train, planted]).take(pa.array(rng.permutation(train.num_rows + planted.num_rows)))
    (out / "train").mkdir(parents=True, exist_ok=True)
    half = both.num_rows // 2
    pq.write_table(both.slice(0, half), out / "train" / "part-00000.parquet")
    pq.write_table(both.slice(half), out / "train" / "part-00001.parquet")
    (out / "src" / "eval").rename(out / "eval")
    result = Planted(out, keys, groups, eval_keys, [keys[i] for i in unsafe_idx])
    (out / "labels.json").write_text(json.dumps({"groups": groups, "eval_copies": eval_keys,
                                                 "unsafe": result.unsafe}, indent=1))
    return result
