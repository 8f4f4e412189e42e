"""`clipray tokenizer train`: a trained vocabulary loads with load_tokenizer and round-trips."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipray.cli import main
from clipray.text import load_tokenizer
from clipray.text.bpe import clean_text
from clipray.text.captions import varied_captions


def test_train_from_parquet_round_trips(tmp_path, capsys):
    captions = varied_captions(3000, seed=3)
    pq.write_table(pa.table({"caption": captions, "key": [str(i) for i in range(len(captions))]}),
                   tmp_path / "part-0.parquet")
    out = tmp_path / "vocab" / "tok.json"
    assert main(["tokenizer", "train", "--source", str(tmp_path / "part-0.parquet"), "--out", str(out),
                 "--vocab-size", "1000"]) == 0
    assert "1000 ids" in capsys.readouterr().out
    tok = load_tokenizer(str(out), context_length=77)
    assert tok.vocab_size == 1000 and tok.eot_id == 999 and tok.sot_id == 998
    # Literal "<start_of_text>"/"<end_of_text>" are the special tokens by design (as in CLIP).
    ascii_captions = [c for c in varied_captions(2000, seed=9)
                      if c.isascii() and clean_text(c) and "_of_text>" not in c]
    assert len(ascii_captions) > 500
    for caption in ascii_captions:
        assert tok.decode(tok.encode(caption)) == clean_text(caption), caption
    ids = tok(["A photo of a CAT", "word " * 200, ""])
    assert ids.dtype == np.int32 and ids.shape == (3, 77)
    assert ids[1, -1] == tok.eot_id and ids[:, 0].tolist() == [tok.sot_id] * 3 and ids.max() == tok.eot_id
    assert ids[2, :2].tolist() == [tok.sot_id, tok.eot_id]
    # Frequent words become single tokens: the vocabulary was learned from the corpus.
    assert len(tok.encode("a photo of the cat")) <= 6


def test_train_from_text_file(tmp_path):
    corpus = tmp_path / "captions.txt"
    corpus.write_text("\n".join(f"a photo of a red car number {i}" for i in range(500)))
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--source", str(corpus), "--out", str(out), "--vocab-size", "300",
                 "--min-frequency", "1"]) == 0
    tok = load_tokenizer(str(out), context_length=16)
    assert tok.vocab_size <= 300 and tok.eot_id == tok.vocab_size - 1
    assert tok.decode(tok.encode("A photo of a red car")) == "a photo of a red car"


def test_too_small_vocabulary_is_one_line(tmp_path, capsys):
    corpus = tmp_path / "captions.txt"
    corpus.write_text("a photo of a cat\n")
    assert main(["tokenizer", "train", "--source", str(corpus), "--out", str(tmp_path / "v.json"),
                 "--vocab-size", "100"]) == 2
    assert capsys.readouterr().err.strip() == ("clipray: error: --vocab-size 100 is too small: the 256 byte symbols "
                                               "and the start- and end-of-text tokens need at least 258")
    assert not (tmp_path / "v.json").exists()
