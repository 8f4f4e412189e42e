"""CLIPPO Unifont renderer: rendered captions read back glyph by glyph; speed; edge cases."""

from __future__ import annotations

import os

import numpy as np
import pytest

from clipray.text.render import DEFAULT_FONT, GLYPH, UnifontRenderer, read_hex_font

if not os.path.exists(DEFAULT_FONT):
    pytest.skip(f"{DEFAULT_FONT} missing: `apt-get install unifont` (make install does it as root)",
                allow_module_level=True)

SAMPLES = {
    "latin": "The Quick brown fox jumps over the lazy dog, 0123456789! Ça été déjà vu.",
    "cyrillic": "Съешь же ещё этих мягких французских булок, да выпей чаю",
    "greek": "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία και το ΣΟΦΟ",
    "cjk": "一只猫在沙发上的照片，北京的夜景。ソファの上の猫 고양이 사진",
    "arabic": "صورة قطة على الأريكة مرحبا بالعالم",
    "devanagari": "बिल्ली की तस्वीर नमस्ते दुनिया हिन्दी",
}


@pytest.fixture(scope="module")
def renderer() -> UnifontRenderer:
    return UnifontRenderer(DEFAULT_FONT, image_size=224)


@pytest.fixture(scope="module")
def font_bitmaps() -> np.ndarray:
    return read_hex_font(DEFAULT_FONT)[0]


def trimmed(bitmap: np.ndarray) -> np.ndarray:
    """The glyph as CLIPPO draws it, computed here independently of the renderer's tables."""
    ink_cols = [c for c in range(GLYPH) if bitmap[:, c].any()]
    first_ink, last_ink = (ink_cols[0], ink_cols[-1]) if ink_cols else (0, 0)
    first = max(first_ink - 1, 0)
    last = min(max(last_ink + 1, first + 4), GLYPH)
    return bitmap[:, first:last]


def expected_lines(text: str, glyphs: dict[str, np.ndarray], size: int) -> list[str]:
    """CLIPPO's character-level wrap: row = floor(cumulative width / (size - widest glyph))."""
    text = "".join(ch.lower() if ch.isascii() else ch for ch in text)[:768]
    widths = [glyphs[ch].shape[1] for ch in text]
    div = size - max(widths)
    lines: dict[int, str] = {}
    total = 0
    for ch, w in zip(text, widths):
        total += w
        lines[total // div] = lines.get(total // div, "") + ch
    return [lines.get(r, "") for r in range(size // GLYPH)]


def read_back(image: np.ndarray, glyphs: dict[str, np.ndarray]) -> list[str]:
    """Match the rendered rows against the font's glyphs, left to right (depth-first)."""
    ink = image[..., 0] == 0
    by_width = sorted(glyphs.items(), key=lambda kv: -kv[1].shape[1])
    lines = []
    for top in range(0, image.shape[0] - GLYPH + 1, GLYPH):
        band = ink[top : top + GLYPH]

        def parse(x: int, band=band) -> str | None:
            if not band[:, x:].any():
                return ""
            for ch, glyph in by_width:
                w = glyph.shape[1]
                if x + w <= band.shape[1] and np.array_equal(band[:, x : x + w], glyph):
                    rest = parse(x + w)
                    if rest is not None:
                        return ch + rest
            return None

        line = parse(0)
        assert line is not None, f"row at y={top} does not decode into font glyphs"
        lines.append(line)
    return lines


@pytest.mark.parametrize("script", sorted(SAMPLES))
def test_read_back_recovers_wrapped_caption(renderer, font_bitmaps, script):
    text = SAMPLES[script] + " " + SAMPLES[script].upper() * 4  # several lines, wrapped mid-word
    chars = set("".join(ch.lower() if ch.isascii() else ch for ch in text))
    missing = [ch for ch in chars if not renderer.covered[ord(ch)]]
    assert not missing, f"Unifont lacks {missing}"
    glyphs = {ch: trimmed(font_bitmaps[ord(ch)]) for ch in chars}
    image = renderer([text])[0]
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    assert set(np.unique(image)) == {0, 127}
    expected = [line.rstrip(" ") for line in expected_lines(text, glyphs, 224)]
    assert sum(bool(line) for line in expected) >= 3
    assert read_back(image, glyphs) == expected


def test_canvas_full_truncates_and_keeps_fourteen_rows(renderer):
    text = "abcdefghij " * 200
    image = renderer([text])[0]
    rows_with_ink = [(image[r : r + GLYPH, :, 0] == 0).any() for r in range(0, 224, GLYPH)]
    assert all(rows_with_ink) and len(rows_with_ink) == 14


def test_deterministic_empty_and_missing_glyphs(renderer):
    texts = ["a photo of a cat", "", "\U0001f600\U0001f600"]
    first, second = renderer(texts), renderer(texts)
    assert np.array_equal(first, second)
    assert (first[1] == 127).all()  # empty caption: background only
    assert (first[2] == 127).all()  # beyond the BMP: blank glyphs, no boxes
    wide = renderer(["ab\U0001f600cd"])[0]
    narrow = renderer(["abcd"])[0]
    ink_cols = lambda im: np.flatnonzero((im[:16, :, 0] == 0).any(axis=0))  # noqa: E731
    assert ink_cols(wide)[-1] - ink_cols(narrow)[-1] == 4  # a blank glyph is 4 px wide


def test_image_and_text_on_one_canvas(renderer):
    photo = np.zeros((2, 64, 48, 3), dtype=np.uint8)
    photo[..., 0] = 255
    out = renderer.render_with_image(["what colour is it?", "q"], photo, text_rows=2)
    assert out.shape == (2, 224, 224, 3)
    assert (out[:, 32:, :, 0] == 255).all() and (out[:, 32:, :, 1] == 0).all()
    assert (out[0, :16, :, 0] == 0).any() and set(np.unique(out[:, :32])) <= {0, 127}


def test_missing_font_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install unifont"):
        UnifontRenderer(tmp_path / "none.hex")


def test_glyph_table_is_cached_and_mapped(tmp_path, monkeypatch):
    """The first renderer builds the table and stores it; the next maps it read-only (same images).
    Another option (colour) is another table; an unwritable cache only costs the rebuild."""
    monkeypatch.setenv("CLIPRAY_CACHE_DIR", str(tmp_path / "cache"))
    texts = ["a photo of a cat", "Съешь же ещё", "一只猫在沙发上"]
    built = UnifontRenderer(DEFAULT_FONT, image_size=64)
    assert not isinstance(built.strip, np.memmap)
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and sorted(p.name for p in entries[0].iterdir()) == ["covered.npy", "strip.npy", "widths.npy"]
    mapped = UnifontRenderer(DEFAULT_FONT, image_size=64)
    assert isinstance(mapped.strip, np.memmap) and not mapped.strip.flags.writeable
    assert np.array_equal(built(texts), mapped(texts))
    white = UnifontRenderer(DEFAULT_FONT, image_size=64, foreground=255)
    assert len(list((tmp_path / "cache").iterdir())) == 2 and (white(texts) == 255).any()

    (tmp_path / "blocked").write_text("a file where the cache directory should be")
    monkeypatch.setenv("CLIPRAY_CACHE_DIR", str(tmp_path / "blocked"))
    assert np.array_equal(UnifontRenderer(DEFAULT_FONT, image_size=64)(texts), built(texts))
