import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipray.config import load_config
from clipray.data.ops.base import CountingStats
from clipray.data.ops.decode import DecodeImages
from clipray.data.ops.text import CleanCaptions, clean_caption
from clipray.data.pipeline import Preprocess
from clipray.data.stats import PipelineStats
from clipray.text import load_tokenizer

CFG = load_config(data={"name": "t", "model": {"vision": {"image_size": 32, "patch_size": 8},
                                               "text": {"context_length": 16}}})


def jpeg(w=40, h=30, colour=(200, 10, 10)):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="JPEG")
    return buf.getvalue()


def test_decode_drops_null_and_corrupt_and_counts_them():
    good = jpeg()
    batch = {"key": np.array(["a", "b", "c", "d"], dtype=object), "jpg": [good, None, good[: len(good) // 2], b"not"]}
    stats = CountingStats()
    out = DecodeImages("jpg")(batch, stats)
    assert list(out["key"]) == ["a"]
    assert out["image"][0].mode == "RGB" and out["image"][0].size == (40, 30)
    assert stats.dropped == {"null_image": 1, "decode_error": 2}


def test_decode_drops_oversized_header_without_decoding():
    stats = CountingStats()
    out = DecodeImages("jpg", max_pixels=1000)({"key": np.array(["a"], dtype=object), "jpg": [jpeg(40, 30)]}, stats)
    assert len(out["key"]) == 0 and stats.dropped == {"too_many_pixels": 1}


@pytest.mark.parametrize("raw, clean", [
    ("  a&nbsp;red   circle\t", "a red circle"),
    ("a &amp;amp; b", "a & b"),
    ("tab\x00\x07 ctrl", "tab ctrl"),
    ("\u200b \u3000 ", ""),
])
def test_clean_caption(raw, clean):
    assert clean_caption(raw) == clean


def test_clean_caption_equals_its_plain_definition_on_varied_captions():
    """The shortcuts (clipray's ftfy, the printable-ASCII path) give what the plain steps give:
    ftfy.fix_text, HTML unescaped twice, whitespace -> space, other control/format characters
    dropped, whitespace collapsed."""
    import html
    import random
    import string
    import unicodedata

    import ftfy

    from clipray.data.ops.text import _WHITESPACE
    from clipray.text.captions import varied_captions

    def plain(text: str) -> str:
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
        text = "".join(" " if ch.isspace() else ch for ch in text
                       if ch.isspace() or unicodedata.category(ch)[0] != "C")
        return _WHITESPACE.sub(" ", text).strip()

    rng = random.Random(2)
    ascii_texts = ["".join(rng.choice(string.printable) for _ in range(rng.randint(0, 80))) for _ in range(2_000)]
    texts = varied_captions(4_000, seed=7) + ascii_texts + ["a&#10;b", "x&#0;y", "&#x85;z", "p&amp;#9;q"]
    mismatches = [t for t in texts if clean_caption(t) != plain(t)]
    assert not mismatches, mismatches[:3]


def test_empty_and_null_captions_dropped():
    stats = CountingStats()
    out = CleanCaptions("TEXT")({"key": np.array(["a", "b", "c"], dtype=object), "TEXT": ["ok", None, " &nbsp; "]},
                                stats)
    assert out["caption"] == ["ok"] and "TEXT" not in out
    assert stats.dropped == {"null_caption": 1, "empty_caption": 1}


def test_tokenizer_shape_sot_eot_truncation():
    tok = load_tokenizer("words", context_length=6)
    ids = tok(["a b", "one two three four five six seven", ""])
    assert ids.shape == (3, 6) and ids.dtype == np.int32
    assert ids[0, 0] == tok.sot_id and ids[0, 3] == tok.eot_id and ids[0, 4:].sum() == 0
    assert ids[1, -1] == tok.eot_id  # truncation keeps EOT
    assert list(ids[2, :2]) == [tok.sot_id, tok.eot_id]
    assert ids.max() == tok.eot_id


def test_preprocess_counts_every_row(tiny_data):
    table = pq.read_table(tiny_data / "train")
    stats = PipelineStats()
    prep = Preprocess(CFG, train=True, stats=stats)
    rows = 0
    for b in table.to_batches(max_chunksize=50):
        out = prep({k: b.column(k).to_numpy(zero_copy_only=False) for k in ("key", "caption", "jpg")})
        assert out["image"].dtype == np.uint8 and out["image"].shape[1:] == (32, 32, 3)
        assert out["tokens"].shape[1:] == (16,)
        rows += len(out["key"])
    snap = stats.snapshot()
    assert snap["rows_in"] == table.num_rows == 384
    assert snap["rows_out"] == rows == 378
    assert snap["dropped"] == {"decode_error": 2, "empty_caption": 2, "null_image": 2}


def test_train_transform_is_reproducible(tiny_data):
    table = pq.read_table(tiny_data / "train").slice(0, 40)
    batch = {k: table.column(k).to_numpy(zero_copy_only=False) for k in ("key", "caption", "jpg")}
    a = Preprocess(CFG, train=True)(dict(batch))
    b = Preprocess(CFG, train=True)(dict(batch))
    assert np.array_equal(a["image"], b["image"])
