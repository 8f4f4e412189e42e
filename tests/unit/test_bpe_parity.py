"""CLIP BPE tokenizer: ids equal open_clip's SimpleTokenizer on varied captions."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from clipray.text import load_tokenizer
from clipray.text.captions import varied_captions
from clipray.text.reference import load_reference_module


def load_reference():
    """open_clip's tokenizer.py loaded by file path (spec_from_file_location): the open_clip package,
    and with it torchvision, is never imported.

    A missing reference fails the tests instead of skipping them: `make install` always installs
    it, so its absence is a broken environment, and a skip would let CI pass without parity."""
    try:
        return load_reference_module()
    except ModuleNotFoundError as e:
        pytest.fail(f"the parity reference is missing: {e}", pytrace=False)


@pytest.fixture(scope="module")
def reference():
    return load_reference()


@pytest.fixture(scope="module")
def openai_tok():
    return load_tokenizer("openai", context_length=77)


def test_known_ids(openai_tok):
    ids = openai_tok(["a photo of a cat.", "Hello World!", ""])
    assert ids.dtype == np.int32 and ids.shape == (3, 77)
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    assert ids[1, :5].tolist() == [49406, 3306, 1002, 256, 49407]
    assert ids[2, :3].tolist() == [49406, 49407, 0]
    assert openai_tok.vocab_size == 49408 and openai_tok.eot_id == 49407 == openai_tok.vocab_size - 1


def test_parity_with_simple_tokenizer(reference, openai_tok):
    captions = varied_captions(12_000, seed=0)
    assert len(captions) >= 10_000
    assert sum(not c.isascii() for c in captions) > 5_000  # the corpus is really varied
    ref = reference.SimpleTokenizer(context_length=77)
    expected = ref(captions).numpy()
    ours = openai_tok(captions)
    mismatches = [(c, expected[i][expected[i] > 0].tolist(), ours[i][ours[i] > 0].tolist())
                  for i, c in enumerate(captions) if not np.array_equal(expected[i], ours[i])]
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]}"


def test_plain_ascii_reaches_the_backend_uncleaned_with_the_same_ids(reference, openai_tok):
    """Printable ASCII without "&" or "<" skips clipray's cleaning (the backend lower-cases, and
    spaces only separate words): case, runs of spaces and contractions keep the reference's ids."""
    import random
    import string

    from clipray.text.clean import cleans_to_spacing_and_case

    rng = random.Random(5)
    alphabet = string.ascii_letters + string.digits + string.punctuation.replace("&", "").replace("<", "") + " " * 12
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))) for _ in range(3_000)]
    texts += ["  Leading AND trailing  ", "IT'S", "DON'T   STOP'LL", "A'S'T 'Re'VE", "x" * 400, " ", ""]
    assert all(cleans_to_spacing_and_case(t) for t in texts)
    expected = reference.SimpleTokenizer(context_length=77)(texts).numpy()
    ours = openai_tok(texts)
    mismatches = [t for i, t in enumerate(texts) if not np.array_equal(expected[i], ours[i])]
    assert not mismatches, mismatches[:3]


def test_truncation_keeps_eot_and_context_length(reference):
    tok = load_tokenizer("openai", context_length=16)
    long = ["word " * 100, "中文" * 50]
    ids = tok(long)
    assert ids.shape == (2, 16) and (ids[:, -1] == tok.eot_id).all() and (ids[:, 0] == tok.sot_id).all()
    assert np.array_equal(ids, reference.SimpleTokenizer(context_length=16)(long).numpy())
    assert ids.max() == tok.eot_id  # models pool at argmax


def test_open_clip_package_not_imported(reference):
    assert "open_clip" not in sys.modules and "torchvision" not in sys.modules


def test_encode_decode_openai(openai_tok):
    assert openai_tok.decode(openai_tok.encode("A Photo of a CAT")).strip() == "a photo of a cat"
    row = openai_tok(["Hello, World!"])[0]
    assert openai_tok.decode(row).strip() == "hello , world !"  # id 0 is "!", padding is cut at EOT


def test_missing_vocabulary_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope.txt.gz"))


def test_missing_open_clip_wheel_says_how_to_install(monkeypatch):
    import importlib.util

    from clipray.text import bpe

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "open_clip" else real(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps open_clip_torch.*path"):
        bpe.openai_vocab_path()


def test_parity_tests_fail_when_the_reference_is_missing(monkeypatch):
    """Without open_clip the parity tests must fail, not skip (a skip would pass CI unchecked)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "open_clip" else real(name, *a))
    monkeypatch.delitem(sys.modules, "_clipray_open_clip_tokenizer", raising=False)
    with pytest.raises(pytest.fail.Exception, match=r"the parity reference is missing.*make install"):
        load_reference()


@pytest.mark.parametrize("context_length", [16, 77, 200])
def test_long_multiline_captions_cleaned_only_as_far_as_the_row_reaches(reference, context_length):
    """Long multi-line captions are cleaned line by line only until their words overflow the row;
    the ids still equal SimpleTokenizer's, which cleans everything and then truncates."""
    import random

    from clipray.text.clean import clean_text, clean_text_until

    rng = random.Random(context_length)
    pieces = varied_captions(3_000, seed=11)
    texts = [rng.choice(["\n", "\r\n", "\n\n", " \n"]).join(rng.sample(pieces, rng.randint(8, 60))) for _ in range(150)]
    texts += ["Σ\n" + "ΑΣ\nσ " * 400, "&amp;\n" * 600, "<b>\n" + "&lt;x&gt;\n" * 300, "Ã©\n" * 700]
    # One id per line, lines of every length: some prefix is checked with just too few ids.
    texts += [("cat" + " " * k + "\n") * (1100 // (k + 4) + 250) + "end" for k in range(60)]
    tok = load_tokenizer("openai", context_length=context_length)
    expected = reference.SimpleTokenizer(context_length=context_length)(texts).numpy()
    ours = tok(texts)
    mismatches = [t[:80] for i, t in enumerate(texts) if not np.array_equal(expected[i], ours[i])]
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]}"
    cut = [t for t in texts if clean_text_until(t, tok._overflows) != clean_text(t)]
    assert len(cut) > 50  # the shortcut was really taken
    assert all(clean_text(t).startswith(clean_text_until(t, tok._overflows) + " ") for t in cut)
