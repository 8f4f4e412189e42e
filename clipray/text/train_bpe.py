"""Train a byte-level BPE vocabulary on a caption corpus (`clipray tokenizer train`).

Captions are cleaned exactly as for encoding (`clean_text`: ftfy, HTML, whitespace, lower-case),
then HuggingFace `tokenizers` learns merges over byte-level pre-tokens that keep their leading
space, so decoding gives the cleaned text back. Start/end-of-text are added last, so the
end-of-text id is the largest. The result is one JSON file that `load_tokenizer(path)` reads
(set `text_encoding.tokenizer: path/to/vocab.json`); a training run logs that file to MLflow.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from clipray.errors import InvalidInputError, MissingFileError, UnknownNameError
from clipray.text.bpe import EOT_TEXT, SOT_TEXT, clean_text

MIN_VOCAB_SIZE = 256 + 2  # every byte, then start- and end-of-text


def read_captions(source: str, column: str = "caption", limit: int | None = None) -> Iterator[str]:
    """Captions from parquet (file, directory or glob; `column`) or a text file (one per line)."""
    paths = sorted(glob.glob(source)) if any(c in source for c in "*?[") else [source]
    if not paths or not all(os.path.exists(p) for p in paths):
        raise MissingFileError(f"caption corpus {source!r} does not exist")
    n = 0
    if all(p.endswith((".txt", ".txt.gz")) for p in paths):
        import gzip

        for p in paths:
            with (gzip.open(p, "rt", encoding="utf-8") if p.endswith(".gz") else open(p, encoding="utf-8")) as f:
                for line in f:
                    if limit is not None and n >= limit:
                        return
                    n += 1
                    yield line.rstrip("\n")
        return
    import pyarrow.dataset as pads

    dataset = pads.dataset(paths if len(paths) > 1 else paths[0], format="parquet")
    if column not in dataset.schema.names:
        raise UnknownNameError(f"{source}: no column {column!r} (columns: {', '.join(dataset.schema.names)})")
    for batch in dataset.to_batches(columns=[column]):
        for caption in batch.column(0).to_pylist():
            if limit is not None and n >= limit:
                return
            if caption is not None:
                n += 1
                yield caption


def train_tokenizer(captions: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> Any:
    """A `tokenizers.Tokenizer` with at most `vocab_size` ids (the two specials included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_VOCAB_SIZE:
        raise InvalidInputError(f"vocab_size {vocab_size} is too small: the 256 byte symbols and SOT/EOT need "
                         f"{MIN_VOCAB_SIZE}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    cleaned = (t for t in map(clean_text, captions) if t)
    tokenizer.train_from_iterator(cleaned, trainer=trainer)
    tokenizer.add_special_tokens([SOT_TEXT, EOT_TEXT])  # appended: EOT is the largest id
    return tokenizer


def train_and_save(source: str, out: str, vocab_size: int, *, column: str = "caption",
                   limit: int | None = None, min_frequency: int = 2) -> dict[str, Any]:
    """Train on `source` and write the tokenizer JSON to `out`; returns a summary."""
    count = 0

    def counted() -> Iterator[str]:
        nonlocal count
        for caption in read_captions(source, column, limit):
            count += 1
            yield caption

    tokenizer = train_tokenizer(counted(), vocab_size, min_frequency=min_frequency)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return {"path": str(path), "captions": count, "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True)}
