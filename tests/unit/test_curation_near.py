"""Near-duplicate machinery without Ray: the keep rule, the banded pair search against the
all-pairs reference, signatures of altered real images, and the openclipart set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from clipray.data.curate.near import (
    Thresholds,
    bucket_pairs,
    explode_bands,
    find_near_duplicates_local,
    grids,
    group_pairs,
    popcount,
    signature_of_bytes,
)
from clipray.data.curate.plant import KINDS, alter

OPENCLIPART = Path("/usr/share/openclipart/png")


def test_keep_rule_largest_area_then_smallest_key_and_no_chaining():
    # a~b, b~c, a!~c: b is dropped for a (larger), c stays (not near a kept row)
    g = group_pairs([("b", "a", 50, 100), ("b", "c", 50, 10)])
    assert g.kept == {"b": "a"}
    # equal areas: the smallest key is kept; the order the pairs come in does not matter
    pairs = [("k3", "k1", 9, 9), ("k2", "k1", 9, 9), ("k3", "k2", 9, 9)]
    assert group_pairs(pairs).kept == group_pairs(pairs[::-1]).kept == {"k2": "k1", "k3": "k1"}
    assert group_pairs(pairs).groups() == {"k1": ["k2", "k3"]}


def _banded(keys, h, c, area, thresholds, bands):
    """The Ray pass's pair search, run in-process: explode -> group by (band, value) -> pairs."""
    rows = explode_bands({"key": np.array(keys, dtype=object), "near_hash": h, "color_grid": c,
                          "image_area": area}, bands)
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(rows["band"].tolist(), rows["band_value"].tolist())):
        buckets.setdefault(key, []).append(i)
    pairs = []
    for idx in buckets.values():
        out = bucket_pairs({k: v[idx] for k, v in rows.items()}, thresholds, bands)
        pairs += list(zip(out["a"], out["b"], out["a_area"], out["b_area"]))
    return pairs


def test_banded_pairs_equal_the_reference_and_come_out_once():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=60, dtype=np.uint64)
    h, c = [], []
    for b in base:  # each base hash with 0-3 copies differing in up to 12 random bits
        grid = rng.integers(0, 256, size=48)
        for _ in range(int(rng.integers(1, 5))):
            flips = rng.choice(64, size=int(rng.integers(0, 13)), replace=False)
            h.append(int(b) ^ int(sum(1 << int(f) for f in flips)))
            # colour grids off by up to 60 in some cells: some candidate pairs fail the verify step
            c.append(np.clip(grid + rng.integers(-60, 61, size=48) * (rng.random(48) < 0.1), 0, 255)
                     .astype(np.uint8).tobytes())
    h_arr, c_arr = np.array(h, np.uint64), np.array(c, dtype=object)
    keys = [f"r{i:04d}" for i in range(len(h))]
    area = rng.integers(100, 10_000, size=len(h))
    t = Thresholds(10, 40)
    for bands in (4, 8, 16):
        pairs = _banded(keys, h_arr, c_arr, area, t, bands)
        assert len(pairs) == len({(a, b) for a, b, _, _ in pairs})  # each pair once
        assert all(popcount(np.uint64(h[int(a[1:])] ^ h[int(b[1:])])) <= 10 for a, b, _, _ in pairs)
        g = grids(c)
        assert all(np.abs(g[int(a[1:])] - g[int(b[1:])]).max() <= 40 for a, b, _, _ in pairs)
        ref = find_near_duplicates_local(keys, h_arr, c_arr, area, t, bands=bands)
        assert group_pairs(pairs).kept == ref.kept
    # 16 bands of 4 bits: every pair within 15 bits shares a band, so all pairs are found
    assert group_pairs(_banded(keys, h_arr, c_arr, area, t, 16)).kept == \
        find_near_duplicates_local(keys, h_arr, c_arr, area, t).kept


@pytest.fixture(scope="module")
def clipart(tmp_path_factory):
    if not OPENCLIPART.is_dir():
        pytest.skip("Debian openclipart-png not installed (scripts/install-system-deps.sh installs it)")
    from clipray.data.realsets import write_openclipart

    out = tmp_path_factory.mktemp("oc")
    info = write_openclipart(out, max_rows=60, image_size=128, eval_per_class=2, min_class_images=3, shards=2)
    return out, info


def test_openclipart_set_layout_captions_and_labelled_eval(clipart):
    out, info = clipart
    train = pq.read_table(out / "train")
    ev = pq.read_table(out / "eval" / "part-00000.parquet")
    assert train.num_rows + ev.num_rows + info["skipped_huge"] == 60 == info["train_rows"] + info["eval_rows"] + info["skipped_huge"]
    assert {"key", "caption", "jpg", "width", "height"} <= set(train.column_names)
    classes = json.loads((out / "eval" / "classes.json").read_text())["classes"]
    assert len(classes) == info["classes"] and ev.column("label").to_pylist()
    for label, caption in zip(ev.column("label").to_pylist(), ev.column("caption").to_pylist()):
        assert caption == f"a clip art of {classes[label]}"
    assert all(", clip art of " in c for c in train.column("caption").to_pylist())
    assert not set(train.column("key").to_pylist()) & set(ev.column("key").to_pylist())
    w, h = train.column("width").to_pylist()[0], train.column("height").to_pylist()[0]
    import io

    from PIL import Image

    assert Image.open(io.BytesIO(train.column("jpg")[0].as_py())).size == (w, h) and max(w, h) <= 128


def test_altered_copies_of_real_images_mostly_stay_within_the_thresholds(clipart):
    out, _ = clipart
    jpg = [b for b in pq.read_table(out / "train").column("jpg").to_pylist()]
    rng = np.random.default_rng(0)
    t = Thresholds()
    caught = total = 0
    for i, data in enumerate(jpg[:40]):
        h0, c0, _ = signature_of_bytes(data)
        h1, c1, _ = signature_of_bytes(alter(data, KINDS[i % len(KINDS)], rng))
        caught += bool(t.near_pairs(np.uint64(h0), grids([c0])[0], np.uint64(h1), grids([c1])[0]))
        total += 1
    assert caught >= 0.75 * total  # the measured rates per alteration are in docs/curation.md
    assert alter(jpg[0], "crop", np.random.default_rng(1)) == alter(jpg[0], "crop", np.random.default_rng(1))
