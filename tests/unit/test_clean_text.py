"""clean_text equals SimpleTokenizer's cleaning (ftfy.fix_text, html.unescape twice, whitespace,
lower-case) on strings built to hit every shortcut of clipray.text.clean and its edges."""

from __future__ import annotations

import html
import random
import time
import unicodedata

import ftfy
import pytest

from clipray.text.captions import varied_captions
from clipray.text.clean import _PASS_FIXERS, clean_text, fix_text, ftfy_tables


def reference_clean(text: str) -> str:
    """open_clip tokenizer.py: whitespace_clean(basic_clean(text)).lower()."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


_WORDS = ["a", "photo", "of", "The", "CAT", "isn't", "café", "naïve", "Größe", "ÉCOLE", "x", "42", "Â", "Ã",
          "Москва", "ВГРС", "Σοφία", "ΒΓΞΟ", "猫", "東京", "안녕", "שלום", "مرحبا", "नमस्ते", "😀", "👍🏽"]
_QUOTES = "‘’‚‛“”„‟ʼ«»‹›`´"
_LIGATURES = "ĲĳŉǱǲǳǄǅǆǇǈǉǊǋǌﬀﬁﬂﬃﬄﬅﬆ"
_WIDTH = "".join(chr(c) for c in range(0xFF01, 0xFFEF)) + "\u3000"
_COMBINING = "\u0300\u0301\u0302\u0303\u0308\u030a\u0327\u0345\u3099\u309a\uff9e\uff9f"
_CONTROL = "".join(map(chr, [*range(0x00, 0x20), 0x7F, 0x206A, 0x206F, 0xFEFF, 0xFFF9, 0xFFFC])) + "\x1b[31m"
_C1 = "".join(map(chr, range(0x80, 0xA0)))
_BREAKS = ["\n", "\r", "\r\n", "\u2028", "\u2029", "\x85", "\n\n", " \n"]
_SPACES = [" ", "  ", "\t", "\u00a0", "\u2003", "\u200b", "\u3000", "\x0b", "\x0c", "\x1c"]
_ENTITIES = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&#x27;", "&eacute;", "&EACUTE;", "&Atilde;", "&copy;",
             "&nbsp;", "&amp;amp;", "&amp;eacute;", "&#8217;", "&#x2019;", "&#147;", "&#128;", "&#10;", "&NewLine;",
             "&hellip;", "&unknown;", "&", "&amp", "AT&T", "&#128512;", "&SZLIG;", "＆ａｍｐ；", "&ldquo;", "&#xD800;"]


def _mojibake(rng: random.Random, text: str) -> str:
    raw = text.encode("utf-8")
    codec = rng.choice(["cp1252", "latin-1", "cp1251", "cp1253", "mac_roman", "cp437", "iso-8859-2"])
    once = raw.decode(codec, errors="replace")
    if rng.random() < 0.2:  # twice-mangled
        once = once.encode("utf-8").decode("cp1252", errors="replace")
    return once


def _random_bmp(rng: random.Random, n: int) -> str:
    out = []
    while len(out) < n:
        cp = rng.randrange(0x20, 0x10000)
        if not 0xD800 <= cp <= 0xDFFF:
            out.append(chr(cp))
    return "".join(out)


def _piece(rng: random.Random) -> str:
    kind = rng.randrange(13)
    if kind == 0:
        return rng.choice(_WORDS)
    if kind == 1:
        return _mojibake(rng, " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3))) + rng.choice(_QUOTES))
    if kind == 2:
        return rng.choice(_QUOTES)
    if kind == 3:
        return rng.choice(_LIGATURES)
    if kind == 4:
        return "".join(rng.choice(_WIDTH) for _ in range(rng.randint(1, 4)))
    if kind == 5:
        return rng.choice("aeiouAOUnc ｅｶ" + "ÃÂ") + rng.choice(_COMBINING)
    if kind == 6:
        return rng.choice(_CONTROL)
    if kind == 7:
        return rng.choice(_C1)
    if kind == 8:
        return rng.choice(_BREAKS)
    if kind == 9:
        return rng.choice(_ENTITIES)
    if kind == 10:
        return _random_bmp(rng, rng.randint(1, 4))
    if kind == 11:
        return rng.choice(["<", "<b>", "a < b", ">", "&lt;i&gt;"])
    return rng.choice(_SPACES)


def stress_strings(n: int, seed: int = 0) -> list[str]:
    """Short strings of 1-12 pieces: mojibake in seven code pages (also twice mangled), curly quotes,
    ligatures, fullwidth/halfwidth forms, combining marks (NFC), C0/C1 controls, terminal escapes,
    every kind of line break, odd whitespace, HTML entities (named, numeric, upper-case, nested,
    fullwidth), "<", and random BMP code points without surrogates."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [_piece(rng) for _ in range(rng.randint(1, 12))]
        glue = rng.choice(["", " ", ""])
        out.append(glue.join(parts))
    return out


def test_clean_text_equals_reference_on_50k_stress_strings():
    texts = stress_strings(50_000, seed=5)
    start = time.process_time()
    mismatches = [(t, clean_text(t), reference_clean(t)) for t in texts if clean_text(t) != reference_clean(t)]
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]}"
    assert time.process_time() - start < 40


def test_fix_text_equals_ftfy_on_multiline_and_long_texts():
    rng = random.Random(1)
    pieces = stress_strings(4_000, seed=6)
    texts = ["\n".join(rng.sample(pieces, rng.randint(2, 30))) for _ in range(400)]
    texts += ["x\n<b>\n&amp;\n&eacute;", "&amp;\n<\n&amp;", "Ã\n", "\nÃ \n", "a\r\nÃ\u3000b", "é" * 10 + "\n" + "Ã©" * 5]
    texts += varied_captions(12_000, seed=0)  # the parity corpus, compared before tokenizing
    for text in texts:
        assert fix_text(text) == ftfy.fix_text(text), text


def test_surrogates_go_to_ftfy():
    for text in ["\ud83d\ude00 cat", "lone \udc00 x", "\ud800", "a\ud83d\x00\ude00b"]:
        assert clean_text(text) == reference_clean(text)


def test_inert_table_matches_each_fixer_character_by_character():
    """The bisection in changed_code_points finds exactly the code points that some pass fixer
    changes when called on that character alone (checked here one by one, all of Unicode)."""
    ft = ftfy_tables()
    fixers = [ftfy.FIXERS[name] for name in _PASS_FIXERS]
    for cp in range(0x110000):
        ch = chr(cp)
        changed = any(f(ch) != ch for f in fixers)
        assert (ft.not_inert.match(ch) is not None) == changed, hex(cp)


def test_stored_tables_are_what_ftfy_computes():
    """clipray/text/ftfy_tables.json saves each process the 0.4 CPU-s of computing the tables; it
    must equal a fresh computation wherever it is used (its key: ftfy release, Unicode database)."""
    import json

    from clipray.text import clean

    stored = json.loads(clean.TABLES_FILE.read_text())
    fresh = clean.compute_tables([ftfy.FIXERS[name] for name in _PASS_FIXERS], ftfy.__version__)
    if stored["key"] != fresh["key"]:
        pytest.skip(f"the stored tables are for {stored['key']}, this environment computes its own "
                    f"({fresh['key']}); refresh them with clipray.text.clean.save_ftfy_tables()")
    assert stored == fresh


def test_tables_are_computed_when_the_stored_ones_do_not_apply(monkeypatch, tmp_path):
    from clipray.text import clean

    expected = ftfy_tables()
    (tmp_path / "t.json").write_text('{"key": {"ftfy": "0.0"}, "changed": [], "simple": []}')
    monkeypatch.setattr(clean, "TABLES_FILE", tmp_path / "t.json")
    clean.ftfy_tables.cache_clear()
    try:
        computed = clean.ftfy_tables()
        assert computed.not_inert.pattern == expected.not_inert.pattern
        assert computed.not_simple.pattern == expected.not_simple.pattern
    finally:
        monkeypatch.undo()
        clean.ftfy_tables.cache_clear()


def test_nfc_never_produces_a_character_that_a_fixer_changes():
    """NFC of a string of inert characters is made of inert characters: the outputs of NFC are the
    characters of canonical decompositions and canonical composites, all inert. The one-pass
    argument of the segment shortcut rests on this."""
    ft = ftfy_tables()
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        nfd = unicodedata.normalize("NFD", ch)
        if nfd != ch:  # a canonical composite (or singleton): NFC may produce it
            assert ft.not_inert.match(ch) is None, hex(cp)
        if ft.not_inert.match(ch) is None:
            assert ft.not_inert.search(nfd + unicodedata.normalize("NFC", ch)) is None, hex(cp)


@pytest.mark.parametrize("text", ["", " ", "a photo of a cat", "A&amp;B", "it’s", "ｆｕｌｌ", "ﬁne", "café",
                                  "cafÃ©", "Ã\u3000x", "e\u0301", "x\r\ny", "&lt;b&gt;bold&lt;/b&gt;", "<b>&amp;</b>"])
def test_examples(text):
    assert clean_text(text) == reference_clean(text)


def test_other_ftfy_release_gets_plain_ftfy(monkeypatch):
    """The shortcuts are proven for ftfy 6.3; under another release every text goes to ftfy."""
    from clipray.text import clean

    monkeypatch.setattr(clean, "_PROVEN_FTFY", ("0", "0"))
    clean.ftfy_tables.cache_clear()
    try:
        assert not clean.ftfy_tables().shortcuts
        texts = [*stress_strings(300, seed=9), "it’s a\nlong\n" * 200]
        assert [clean_text(t) for t in texts] == [reference_clean(t) for t in texts]
        assert clean.clean_text_until(texts[-1], lambda _: True) == reference_clean(texts[-1])
    finally:
        monkeypatch.undo()
        clean.ftfy_tables.cache_clear()
    assert clean.ftfy_tables().shortcuts


def test_badness_prefilter_never_hides_a_bad_text():
    """`maybe_bad` finds nothing only where ftfy's `is_bad` is False. Strings drawn from the
    characters of ftfy's mojibake categories (and the ASCII and spaces its patterns use) hit most
    of BADNESS_RE's branches; each is checked whole and from every start position."""
    from ftfy.badness import MOJIBAKE_CATEGORIES, is_bad

    ft = ftfy_tables()
    assert ft.maybe_bad.pattern != "(?s:.)|^", "the prefilter fell back to 'always maybe'"
    alphabet = "".join(MOJIBAKE_CATEGORIES.values()).replace("\\x80-\\x9f", "") + _C1
    alphabet += "ÂÃÎÐØÙàâó√≈‚ÄВГРСвЂΒΓΞΟβ€ā×²³°µŒœ" + "azAZ .,?!" + "\u00a0\t"
    rng = random.Random(7)
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(60_000)]
    texts += stress_strings(20_000, seed=8)
    bad = 0
    for text in texts:
        if is_bad(text):
            bad += 1
            assert ft.maybe_bad.search(text) is not None, repr(text)
    assert bad > 10_000  # the strings really exercise the bad branches


def test_required_characters_reads_a_pattern_soundly():
    import re

    from clipray.text.clean import required_characters

    def chars(pattern: str) -> set[str] | None:
        found = required_characters(re.compile(pattern, re.VERBOSE))
        return None if found is None else {chr(cp) for cp in found}

    assert chars("a[éè] | x ü+") == {"é", "è", "ü"}
    assert chars("[a-z] ‚ [âó]") == {"‚"}  # of two mandatory items, the one without letters
    assert chars("€ | a") is None  # a branch of ASCII only: no non-ASCII character is required
    assert chars("é? x") is None  # an optional item requires nothing
    assert chars(r"\w é*") is None
    assert chars("(?i:é)") is None  # a case-insensitive literal also matches É
    assert required_characters(re.compile("é", re.IGNORECASE)) is None
    assert chars("(?:é|ß)(?=x)") == {"é", "ß"}


def test_one_pass_equals_the_fixer_chain():
    """The table-driven pass equals ftfy's pass fixers run in order on text whose changed characters
    are all simple, with line breaks and terminal escapes among them."""
    from clipray.text.clean import _pass

    ft = ftfy_tables()
    rng = random.Random(9)
    simple = sorted(ft.one_pass)
    inert = ["a", "Z", " ", "\n", "é", "猫", "😀", "\u0301", "[", "m", "1"]
    specials = ["\r", "\r\n", "\n\r", "\r\r\n", "\x1b[31m", "\x1b[", "\u2028", "\x85"]

    def chain(text: str) -> str:
        for fixer in ft.pass_fixers:
            text = fixer(text)
        return text

    checked = 0
    for _ in range(30_000):
        pool = rng.choice([simple, inert, specials])
        text = "".join(rng.choice(rng.choice([simple, inert, specials, pool])) for _ in range(rng.randint(1, 10)))
        if ft.not_simple.search(text) is None:
            checked += 1
            assert _pass(ft, text) == chain(text), repr(text)
    assert checked > 20_000


def test_one_pass_table_leaves_crlf_to_the_fixers_when_that_is_not_exact():
    from ftfy.fixes import fix_line_breaks

    from clipray.text.clean import _one_pass_table

    def drop_nul(text: str) -> str:  # deletes a character before the line-break fixer runs
        return text.replace("\x00", "")

    assert _one_pass_table({0x0D, 0x00}, [drop_nul, fix_line_breaks]) == {"\x00": ""}
    assert _one_pass_table({0x0D, 0x2028}, [fix_line_breaks]) == {"\r": "\n", "\u2028": "\n"}
    assert "\x1b" not in _one_pass_table({0x1B}, [lambda t: t.replace("\x1b", "")])
