"""Tokenizer interface and registry, plus a dependency-free hashed-word tokenizer."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import regex

from clipray.errors import InvalidInputError
from clipray.registry import Registry


@runtime_checkable
class Tokenizer(Protocol):
    """Strings -> (N, context_length) int32 ids with SOT/EOT; EOT is the largest id.

    Ids are in [0, vocab_size); SOT and EOT are the last two. The positions after a row's first
    EOT are padding: they hold 0, which is not a padding id (it is a real token, "!" in OpenAI's
    vocabulary); models find padding from the position of EOT (`clipray.models.common.text`).
    """

    context_length: int
    vocab_size: int
    sot_id: int
    eot_id: int

    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


TokenizerFactory = Callable[..., Tokenizer]
tokenizer_registry: Registry[TokenizerFactory] = Registry("tokenizer", lazy_modules=["clipray.text.bpe"])


def load_tokenizer(spec: str = "openai", context_length: int = 77) -> Tokenizer:
    """Build a tokenizer from a spec: a registered name, or `name:argument` (e.g. a vocab path)."""
    name, _, arg = spec.partition(":")
    if name not in tokenizer_registry and ("/" in spec or spec.endswith((".gz", ".txt", ".json"))):
        name, arg = "file", spec
    factory = tokenizer_registry.get(name)
    return factory(arg, context_length=context_length) if arg else factory(context_length=context_length)


def check_vocabulary_fits(tokenizer: Tokenizer, model_vocab_size: int, spec: str) -> None:
    """Refuse a text tower whose embedding cannot hold every id of the tokenizer (it would fail
    inside the training workers, with an index error, after the cluster had started)."""
    if tokenizer.vocab_size > model_vocab_size:
        raise InvalidInputError(f"text_encoding.tokenizer {spec!r} has {tokenizer.vocab_size} ids but model.text.vocab_size is "
                         f"{model_vocab_size}: set model.text.vocab_size to at least {tokenizer.vocab_size}")


# CLIP's pre-tokenisation pattern: contractions, letter runs, single digits, other symbol runs.
WORD_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


def pack(ids_per_text: Sequence[Sequence[int]], context_length: int, sot_id: int, eot_id: int) -> np.ndarray:
    """[SOT] + ids + [EOT], filled with 0 after EOT; overlong texts are cut and keep EOT as the last token."""
    out = np.zeros((len(ids_per_text), context_length), dtype=np.int32)
    for row, ids in enumerate(ids_per_text):
        seq = [sot_id, *ids, eot_id]
        if len(seq) > context_length:
            seq = seq[:context_length]
            seq[-1] = eot_id
        out[row, : len(seq)] = seq
    return out


class HashedWordTokenizer:
    """Lower-cased words hashed into a fixed vocabulary (no vocabulary file needed).

    Collisions are possible but rare for caption-sized vocabularies; use the CLIP BPE tokenizer
    (`openai`) for real data.
    """

    def __init__(self, context_length: int = 77, vocab_size: int = 49408) -> None:
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.sot_id = vocab_size - 2
        self.eot_id = vocab_size - 1

    def _ids(self, text: str) -> list[int]:
        buckets = self.vocab_size - 3  # 0 (the fill value) is left unused, the last two are SOT/EOT
        return [1 + zlib.crc32(w.encode()) % buckets for w in WORD_PATTERN.findall(text.lower())]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return pack([self._ids(t) for t in texts], self.context_length, self.sot_id, self.eot_id)


@tokenizer_registry.register("words")
def _words(context_length: int = 77) -> Tokenizer:
    return HashedWordTokenizer(context_length=context_length)
