"""Caption clean-up, the empty-caption filter and the text encoding (tokens or rendered pixels)."""

from __future__ import annotations

import html
import unicodedata

import numpy as np
import regex

from clipray.data.ops.base import Batch, DropStats, drop_where, op_registry
from clipray.text.encoding import TextEncoding, text_encoding

_WHITESPACE = regex.compile(r"[\s\u200b\u200c\u200d\u2060\ufeff]+")


def clean_caption(text: str, *, fix_text: bool = True) -> str:
    """Repair mojibake (ftfy), unescape HTML entities, drop control/format characters, collapse whitespace."""
    if fix_text:
        # ftfy also unescapes HTML entities, but only in text without tags: unescape below regardless.
        text = _ftfy_fix(text)
    text = html.unescape(html.unescape(text))
    if text.isascii() and text.isprintable():  # no control characters; spaces are its only whitespace
        return " ".join(text.split())
    text = "".join(
        " " if ch.isspace() else ch
        for ch in text
        if ch.isspace() or unicodedata.category(ch)[0] != "C"
    )
    return _WHITESPACE.sub(" ", text).strip()


def _ftfy_fix(text: str) -> str:
    from clipray.text.clean import fix_text

    # `ftfy.fix_text(text)` (its default normalization, NFC, keeps characters as written; NFKC
    # would fold e.g. full-width forms), skipping ftfy for the lines it provably leaves alone:
    # ASCII captions cost about 1 us instead of 20-25.
    return fix_text(text)


def as_text(value: object) -> str | None:
    """A caption cell as str; None when it is not text (non-UTF-8 bytes, numbers, ...)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


class CleanCaptions:
    """`caption_column` -> `caption` (cleaned str).

    Drops `null_caption` (missing), `invalid_caption` (not text: invalid UTF-8 bytes, numbers) and
    `empty_caption` (nothing left after clean-up).
    """

    writes = ("caption",)

    def __init__(self, caption_column: str = "caption", *, fix_text: bool = True) -> None:
        self.caption_column = caption_column
        self.reads = (caption_column,)
        self.fix_text = fix_text

    def __call__(self, batch: Batch, stats: DropStats) -> Batch:
        raw = batch[self.caption_column]
        null = np.array([c is None for c in raw], dtype=bool)
        texts = [as_text(c) if c is not None else "" for c in raw]
        invalid = np.array([t is None for t in texts], dtype=bool)
        texts = [clean_caption(t, fix_text=self.fix_text) if t else "" for t in texts]
        batch = dict(batch)
        if self.caption_column != "caption":
            del batch[self.caption_column]
        batch["caption"] = texts
        batch = drop_where(batch, null, "null_caption", stats)
        batch = drop_where(batch, invalid[~null], "invalid_caption", stats)
        empty = np.array([not t for t in batch["caption"]], dtype=bool)
        return drop_where(batch, empty, "empty_caption", stats)


class EncodeText:
    """`caption` -> the text encoding's column: `tokens` int32 (N, context_length) or `text_image`
    uint8 (N, S, S, 3), the caption drawn in GNU Unifont (CLIPPO). Encoder built once per actor."""

    reads = ("caption",)

    def __init__(self, encoding: TextEncoding) -> None:
        self.encoding = encoding
        self.writes = (encoding.column,)
        self.encoder = encoding.encoder()

    def __call__(self, batch: Batch, stats: DropStats) -> Batch:
        batch = dict(batch)
        batch[self.encoding.column] = self.encoder(list(batch["caption"]))
        return batch


@op_registry.register("clean_caption")
def _clean(config, *, train: bool) -> CleanCaptions:
    return CleanCaptions(config.data.caption_column, fix_text=config.data.fix_text)


@op_registry.register("encode_text")
def _encode_text(config, *, train: bool) -> EncodeText:
    # `tokenize` and `render_text` name the same op for one kind each; `op_names` checks the match.
    return EncodeText(text_encoding(config))


op_registry.register("tokenize")(_encode_text)
op_registry.register("render_text")(_encode_text)
