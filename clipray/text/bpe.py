"""CLIP byte-level BPE tokenizers: OpenAI's vocabulary (`openai`) and vocabulary files (`file`).

Text is cleaned exactly as OpenAI/open_clip's `SimpleTokenizer` does (ftfy, HTML unescape twice,
whitespace collapse, lower-casing) and then encoded by a compiled backend over the whole batch:

- CLIP merges files (`bpe_simple_vocab_16e6.txt.gz` format, `.txt`/`.gz`): instant-clip-tokenizer
  (Rust). It keeps no per-word cache, so long-lived Ray actors do not grow.
- Vocabularies trained by `clipray tokenizer train` (`.json`, HuggingFace `tokenizers` format).

Both put start-of-text and end-of-text last in the vocabulary, so EOT is the largest id.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import itertools
import os
import shutil
import tempfile
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import regex

from clipray.errors import InvalidInputError, MissingFileError
from clipray.text.clean import (  # clean_text: also imported from here
    clean_text,
    clean_text_until,
    cleans_to_spacing_and_case,
)
from clipray.text.tokenizer import Tokenizer, pack, tokenizer_registry

OPENAI_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
MAX_MERGES = 49152 - 256 - 2  # as SimpleTokenizer: 256 bytes + 256 bytes</w> + 48,894 merges + SOT + EOT = 49,408
SOT_TEXT, EOT_TEXT = "<start_of_text>", "<end_of_text>"

# SimpleTokenizer's pattern including its special tokens: a caption containing the literal text
# "<start_of_text>" is encoded as the special id there, and parity needs the same.
_SPECIAL_AWARE = regex.compile(
    "<start_of_text>|<end_of_text>" + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def openai_vocab_path() -> Path:
    """OpenAI's merges file inside the installed `open_clip_torch` wheel, found without importing
    open_clip (its package import pulls in torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / OPENAI_VOCAB_FILE
        if path.is_file():
            return path
    raise MissingFileError(
        f"tokenizer 'openai' needs {OPENAI_VOCAB_FILE}, which ships inside the open_clip_torch wheel "
        f"({'not installed' if not locations else 'file missing in ' + ', '.join(locations)}). Install it "
        "without its dependencies (`pip install --no-deps open_clip_torch==3.3.0`, done by `make install`) "
        "or set text_encoding.tokenizer to the path of a CLIP merges file (.txt or .txt.gz)."
    )


def fetch_to_local(uri: str) -> Path:
    """A local path for `uri` (local path, file:// or any URI pyarrow.fs understands, e.g. s3://).
    Remote files are copied into a temporary directory once."""
    if uri.startswith("file://"):
        uri = uri.removeprefix("file://")
    if "://" not in uri:
        path = Path(uri).expanduser()
        if not path.is_file():
            raise MissingFileError(f"tokenizer vocabulary {uri!r} does not exist")
        return path
    from pyarrow import fs

    filesystem, remote = fs.FileSystem.from_uri(uri)
    target = Path(tempfile.mkdtemp(prefix="clipray-vocab-")) / Path(remote).name
    with filesystem.open_input_stream(remote) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


@functools.lru_cache(maxsize=1)
def _unicode_drift() -> frozenset[str]:
    """Characters whose class under the reference pattern (the `regex` module, IGNORECASE) differs
    from their plain Unicode category in Python's own tables: code points assigned in newer Unicode
    versions, and case-folding oddities such as U+0345, which the reference silently drops. The
    Rust backend follows plain categories, so texts with these characters take the Python path.

    A set, not a character class: about 27,000 code points in 89 runs, most beyond the BMP, which `re`
    tests one range after another at every position (4-5 us per caption, against 0.3-0.4 us for
    `isdisjoint`; about 2 MB)."""
    cps = np.array([cp for cp in range(0x80, 0x110000) if not 0xD800 <= cp <= 0xDFFF])
    chars = "".join(map(chr, cps.tolist()))
    reference = np.zeros(len(cps), dtype=np.int8)  # 0 dropped, 1 letter, 2 number, 3 other
    for value, pattern in ((3, r"[^\s\p{L}\p{N}]+"), (2, r"[\p{N}]+"), (1, r"[\p{L}]+")):
        for m in regex.finditer(pattern, chars, regex.IGNORECASE):
            reference[m.start() : m.end()] = value
    plain = np.array([_PLAIN_CLASS.get(unicodedata.category(ch)[0], 3) for ch in chars], dtype=np.int8)
    for m in regex.finditer(r"\s+", chars):
        plain[m.start() : m.end()] = 0
    return frozenset(map(chr, cps[reference != plain].tolist()))


_PLAIN_CLASS = {"L": 1, "N": 2}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class _PythonBPE:
    """The reference BPE algorithm in Python with a bounded word cache, for the rare texts the Rust
    backend cannot reproduce (see `_unicode_drift`)."""

    def __init__(self, merges: list[str]) -> None:
        pairs = [tuple(m.split()) for m in merges]
        byte_chars = list(_bytes_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(p) for p in pairs]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {p: i for i, p in enumerate(pairs)}
        self.byte_encoder = _bytes_to_unicode()
        self.word = functools.lru_cache(maxsize=16384)(self._word)

    def _word(self, token: str) -> tuple[int, ...]:
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            ranked = [(self.ranks.get(pair, 1 << 30), pair) for pair in itertools.pairwise(word)]
            rank, (first, second) = min(ranked)
            if rank == 1 << 30:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return tuple(self.encoder[w] for w in word)

    def encode(self, cleaned: str, specials: dict[str, int]) -> list[int]:
        ids: list[int] = []
        for token in _SPECIAL_AWARE.findall(cleaned):
            if token in specials:
                ids.append(specials[token])
            else:
                ids.extend(self.word("".join(self.byte_encoder[b] for b in token.encode("utf-8"))))
        return ids


class ClipBPETokenizer:
    """CLIP merges file -> SimpleTokenizer-identical ids, encoded in Rust over the whole batch."""

    def __init__(self, vocab_path: str | os.PathLike[str], context_length: int = 77) -> None:
        import instant_clip_tokenizer

        path = Path(vocab_path)
        merges = _read_text(path).split("\n")[1 : MAX_MERGES + 1]
        merges = [m for m in merges if m.strip()]
        self.vocab_size = 512 + len(merges) + 2
        # instant-clip-tokenizer reads only plain text files: hand it the merges it should use.
        with tempfile.TemporaryDirectory(prefix="clipray-bpe-") as tmp:
            plain = Path(tmp) / "merges.txt"
            plain.write_text("#version: 0.2\n" + "\n".join(merges), encoding="utf-8")
            self._backend = instant_clip_tokenizer.Tokenizer.load(str(plain), self.vocab_size)
        self.sot_id = int(self._backend.start_of_text())
        self.eot_id = int(self._backend.end_of_text())
        if (self.sot_id, self.eot_id) != (self.vocab_size - 2, self.vocab_size - 1):
            raise InvalidInputError(f"{path}: unexpected special ids {self.sot_id}, {self.eot_id} for {len(merges)} merges")
        self.context_length = context_length
        self.source = str(path)
        self._merges = merges
        self._python: _PythonBPE | None = None

    def _needs_reference_path(self, cleaned: str) -> bool:
        if cleaned.isascii():
            return "<" in cleaned and (SOT_TEXT in cleaned or EOT_TEXT in cleaned)
        return SOT_TEXT in cleaned or EOT_TEXT in cleaned or not _unicode_drift().isdisjoint(cleaned)

    def _reference_encode(self, cleaned: str) -> list[int]:
        if self._python is None:
            self._python = _PythonBPE(self._merges)
        return self._python.encode(cleaned, {SOT_TEXT: self.sot_id, EOT_TEXT: self.eot_id})

    def encode(self, text: str) -> list[int]:
        """Ids of one text without SOT/EOT (SimpleTokenizer.encode)."""
        cleaned = clean_text(text)
        if self._needs_reference_path(cleaned):
            return self._reference_encode(cleaned)
        return list(self._backend.encode(cleaned))

    def decode(self, ids: Sequence[int]) -> str:
        return self._backend.decode(_content_ids(ids, self.sot_id, self.eot_id))

    def _overflows(self, cleaned: str) -> bool:
        """`cleaned` alone gives more ids than a row holds: at least one per pre-token of
        SimpleTokenizer's pattern, and a row keeps context_length - 2 of them."""
        need = self.context_length - 1
        return len(cleaned) >= need and sum(1 for _ in itertools.islice(_SPECIAL_AWARE.finditer(cleaned), need)) >= need

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        # A long multi-line caption is cleaned only as far as its tokens can reach the row: the ids
        # of a cleaned prefix that ends between words are the first ids of the whole text.
        # Text whose cleaning is only spacing and case goes to the backend as it is: the backend
        # lower-cases each text, and its word pattern never matches a space, so runs of spaces and
        # case give the same words (instant-clip-tokenizer 0.1: `Tokenizer::encode`). Text with "<"
        # is cleaned, so that special-token text ("<START_OF_TEXT>") is found lower-cased below.
        cleaned = [t if "<" not in t and cleans_to_spacing_and_case(t) else clean_text_until(t, self._overflows)
                   for t in texts]
        out = self._backend.tokenize_batch(cleaned, self.context_length).astype(np.int32, copy=False)
        # ASCII without "<" never needs the reference path: the method call is skipped for it.
        slow = [i for i, c in enumerate(cleaned) if ("<" in c or not c.isascii()) and self._needs_reference_path(c)]
        if slow:
            out[slow] = pack([self._reference_encode(cleaned[i]) for i in slow],
                             self.context_length, self.sot_id, self.eot_id)
        return out


class TrainedBPETokenizer:
    """A vocabulary trained by `clipray tokenizer train` (HuggingFace `tokenizers` JSON).

    Byte-level BPE over CLIP-cleaned text whose pre-tokenizer keeps spaces inside the tokens, so
    `decode(encode(text)) == clean_text(text)`. SOT/EOT are the last two ids.
    """

    def __init__(self, path: str | os.PathLike[str], context_length: int = 77) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        raw = _read_text(Path(path))
        self._backend = HFTokenizer.from_str(raw)
        self.vocab_size = self._backend.get_vocab_size(with_added_tokens=True)
        sot, eot = self._backend.token_to_id(SOT_TEXT), self._backend.token_to_id(EOT_TEXT)
        if sot is None or eot != self.vocab_size - 1:
            raise InvalidInputError(f"{path}: not a clipray tokenizer file (needs {SOT_TEXT} and {EOT_TEXT} as the last ids)")
        self.sot_id: int = sot
        self.eot_id: int = eot
        self.context_length = context_length
        self.source = str(path)

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(clean_text(text), add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._backend.decode(_content_ids(ids, self.sot_id, self.eot_id), skip_special_tokens=True)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self._backend.encode_batch([clean_text(t) for t in texts], add_special_tokens=False)
        return pack([e.ids for e in encodings], self.context_length, self.sot_id, self.eot_id)


def _content_ids(ids: Sequence[int], sot_id: int, eot_id: int) -> list[int]:
    """The ids of a packed row (or of `encode`) without SOT, EOT and the padding after EOT
    (padding is id 0, which is also a real token: "!")."""
    values = [int(i) for i in ids]
    if eot_id in values:
        values = values[: values.index(eot_id)]
    return [i for i in values if i != sot_id]


def _read_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return f.read().decode("utf-8")


def load_vocabulary_file(spec: str, context_length: int = 77) -> Tokenizer:
    """A CLIP merges file (.txt/.gz) or a trained clipray tokenizer (.json), local or remote."""
    path = fetch_to_local(spec)
    if path.name.endswith((".json", ".json.gz")):
        return TrainedBPETokenizer(path, context_length=context_length)
    if _read_text(path)[:64].lstrip().startswith("{"):  # a JSON tokenizer under another name
        return TrainedBPETokenizer(path, context_length=context_length)
    return ClipBPETokenizer(path, context_length=context_length)


@tokenizer_registry.register("openai")
def _openai(context_length: int = 77) -> Tokenizer:
    return ClipBPETokenizer(openai_vocab_path(), context_length=context_length)


@tokenizer_registry.register("file")
def _file(path: str, context_length: int = 77) -> Tokenizer:
    return load_vocabulary_file(path, context_length=context_length)
