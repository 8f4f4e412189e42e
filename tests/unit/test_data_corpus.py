"""Decode and filter ops as pure functions over the bad-record corpus: what is kept, what is dropped, why."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipray.config import load_config
from clipray.data.ops.base import CountingStats
from clipray.data.ops.decode import DecodeImages
from clipray.data.ops.filters import CaptionFilter, DedupImages, ImageFilter
from clipray.data.ops.text import CleanCaptions, clean_caption
from clipray.data.pipeline import Preprocess, arrow_to_columns
from clipray.data.stats import PipelineStats
from tests.support.corpus import CORPUS_DATA_CONFIG, bad_rows, write_corpus

CFG = load_config(data={"name": "t", "data": CORPUS_DATA_CONFIG,
                        "model": {"vision": {"image_size": 32, "patch_size": 8}, "text": {"context_length": 16}}})


@pytest.fixture(scope="module")
def corpus():
    return {r.key: r for r in bad_rows(np.random.default_rng(0))}


@pytest.mark.parametrize("decoder", ["simplejpeg", "pil"])
def test_decode_outcome_of_every_image_case(corpus, decoder):
    rows = [r for r in corpus.values() if r.outcome in ("keep", "decode_error", "too_many_pixels", "null_image")]
    batch = {"key": np.array([r.key for r in rows], dtype=object), "jpg": [r.jpg for r in rows]}
    stats = CountingStats()
    out = DecodeImages("jpg", decoder=decoder, target_size=32)(batch, stats)
    kept = set(out["key"])
    assert kept == {r.key for r in rows if r.outcome == "keep"}
    assert stats.dropped == {"decode_error": 3, "too_many_pixels": 2, "null_image": 1}
    for img in out["image"]:
        assert img.mode == "RGB"


def decode_one(data, **kw):
    return DecodeImages("jpg", **kw).decode_one(data)


def test_sixteen_bit_png_keeps_its_tones(corpus):
    data = corpus["bad-png-16bit"].jpg
    src = np.asarray(Image.open(io.BytesIO(data))).astype(np.uint32) >> 8
    got = np.asarray(decode_one(data))
    assert np.array_equal(got[:, :, 0], src) and np.array_equal(got[:, :, 1], src)
    assert 0 < got.mean() < 255  # not clipped to white


def test_palette_transparency_composited_on_white(corpus):
    data = corpus["bad-palette-transparent"].jpg
    src = Image.open(io.BytesIO(data))
    transparent = np.asarray(src) == 0
    got = np.asarray(decode_one(data))
    assert transparent.any() and (got[transparent] == 255).all()


def test_cmyk_colours_survive(corpus):
    data = corpus["bad-cmyk-jpeg"].jpg
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    got = np.asarray(decode_one(data)).astype(int)
    assert got.shape == ref.shape and np.abs(got - ref).mean() < 2


@pytest.mark.parametrize("decoder", ["simplejpeg", "pil"])
def test_exif_orientation_applied(corpus, decoder):
    img = decode_one(corpus["bad-exif-rotated"].jpg, decoder=decoder)
    assert img.size == (32, 48)  # stored 48x32, orientation 6 = rotated 90 degrees


def test_reduced_jpeg_decode_covers_the_target():
    rng = np.random.default_rng(0)
    data = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(data, format="JPEG")
    img = decode_one(data.getvalue(), decoder="simplejpeg", min_decode_side=224)
    assert min(img.size) >= 224 and img.size[0] < 800  # scaled down by M/8, never below the target
    full = decode_one(data.getvalue(), decoder="simplejpeg", min_decode_side=0)
    assert full.size == (800, 600)


def test_simplejpeg_rejects_truncated_progressive():
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG", progressive=True)
    stats = CountingStats()
    DecodeImages("jpg")({"key": np.array(["a"], dtype=object), "jpg": [buf.getvalue()[:-200]]}, stats)
    assert stats.dropped == {"decode_error": 1}


def test_caption_ops(corpus):
    rows = [corpus[k] for k in ("bad-null-caption", "bad-long-caption", "bad-invalid-utf8", "bad-whitespace-caption",
                                "bad-html-caption", "bad-mojibake-caption")]
    batch = {"key": np.array([r.key for r in rows], dtype=object), "caption": [r.caption for r in rows]}
    stats = CountingStats()
    out = CaptionFilter(1, 2000)(CleanCaptions("caption")(batch, stats), stats)
    assert out["caption"] == ["a & b <tag> spaced", "schön café"]
    assert stats.dropped == {"null_caption": 1, "invalid_caption": 1, "empty_caption": 1, "caption_too_long": 1}
    assert clean_caption("schÃ¶n", fix_text=False) == "schÃ¶n"


def test_image_filter_bounds():
    imgs = [Image.new("RGB", s) for s in [(40, 40), (10, 40), (200, 40), (40, 160), (39, 160)]]
    stats = CountingStats()
    out = ImageFilter(16, 4.0)({"key": np.arange(5), "image": imgs}, stats)
    assert list(out["key"]) == [0, 3] and stats.dropped == {"too_small": 1, "bad_aspect_ratio": 2}


def test_dedup_within_file_is_stable_across_epochs():
    op = DedupImages("jpg")
    batch = {"key": np.array(["a", "b", "c", "d"], dtype=object), "jpg": [b"x", b"x", b"y", b"x"],
             "path": np.array(["f1", "f1", "f1", "f2"], dtype=object)}
    for _ in range(2):  # a second epoch keeps the same rows
        stats = CountingStats()
        out = op(dict(batch), stats)
        assert list(out["key"]) == ["a", "c", "d"] and stats.dropped == {"duplicate_image": 1}


def test_pipeline_state_keeps_one_duplicate_index_per_dataset():
    from clipray.data.stats import PipelineState

    state = PipelineState()
    first, second = state.open_dedup(), state.open_dedup()
    group = {"f1": ([b"h", b"h"], ["a", "b"])}
    assert state.claim_many(first, group) == {"f1": [False, True]}
    assert state.claim_many(first, {"f1": ([b"h"], ["c"])}) == {"f1": [True]}  # "a" owns it
    assert state.claim_many(second, {"f1": ([b"h"], ["c"])}) == {"f1": [False]}  # another dataset
    state.add(4, 3, {"duplicate_image": 1}, 0.1)
    assert state.snapshot()["rows_in"] == 4 and state.claim_many(second, group) == {"f1": [True, True]}
    for _ in range(PipelineState.KEEP - 1):
        state.open_dedup()
    with pytest.raises(RuntimeError, match="duplicate index 1 was dropped"):
        state.claim_many(first, group)


def test_resumed_index_drops_duplicates_of_consumed_rows_in_any_order():
    """A resumed chunk skips its consumed rows before dedup; the seeded index still drops their
    duplicates, even where a duplicate now arrives first."""
    from clipray.data.stats import PipelineState

    state = PipelineState()
    before = state.open_dedup()
    rows = {"f1": ([b"x", b"y", b"z", b"x"], ["a", "b", "c", "d"]), "f2": ([b"x"], ["e"])}
    assert state.claim_many(before, rows) == {"f1": [False, False, False, True], "f2": [False]}
    claims = state.dedup_claims(before, ["a", "c", "e", "d"])  # consumed: a, c, e ("d" was a duplicate)
    assert claims == {"f1": {b"x": "a", b"z": "c"}, "f2": {b"x": "e"}}

    after = state.open_dedup(claims)  # a, c and e are skipped: they never reach the op again
    assert state.claim_many(after, {"f1": ([b"x", b"z", b"y"], ["d", "f", "b"])}) == {"f1": [True, True, False]}
    assert state.claim_many(after, {"f2": ([b"w"], ["g"])}) == {"f2": [False]}  # new content is kept
    assert state.dedup_claims(after, ["b", "g"]) == {"f1": {b"y": "b"}, "f2": {b"w": "g"}}


def test_invalid_utf8_in_arrow_string_column_does_not_break_the_batch(tmp_path):
    caps = pa.array([b"fine", b"\xff\xfe"], pa.binary())
    table = pa.table({"caption": pa.Array.from_buffers(pa.string(), 2, caps.buffers())})
    cols = arrow_to_columns(table)
    assert list(cols["caption"]) == ["fine", b"\xff\xfe"]


def test_corpus_through_preprocess_exact(tmp_path):
    info = write_corpus(tmp_path, shards=2, good_per_shard=10)
    stats = PipelineStats()
    keys = []
    for f in sorted(tmp_path.glob("*.parquet")):
        prep = Preprocess(CFG, train=True, stats=stats)
        for b in pq.ParquetFile(f).iter_batches(batch_size=7):
            out = prep(b)
            if not len(out["key"]):
                continue  # a batch of bad rows only
            assert out["image"].dtype == np.uint8 and out["image"].shape[1:] == (32, 32, 3)
            keys += list(out["key"])
    snap = stats.snapshot()
    assert sorted(keys) == info["keep"]
    assert snap["dropped"] == info["dropped"]
    assert snap["rows_in"] == info["rows"] == snap["rows_out"] + sum(snap["dropped"].values())
