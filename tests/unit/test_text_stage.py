"""The text stage is chosen by text_encoding.kind: tokenize (ids) or render_text (CLIPPO pixels)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from clipray.config import ConfigError, load_config
from clipray.data.pipeline import Preprocess, op_names
from clipray.data.stats import PipelineStats
from clipray.text.encoding import text_encoding
from clipray.text.render import DEFAULT_FONT


def config(kind: str, **text):
    return load_config(data={"name": "t", "text_encoding": {"kind": kind, **text},
                             "model": {"vision": {"image_size": 32, "patch_size": 8},
                                       "text": {"context_length": 16}}})


def test_op_chain_follows_text_kind():
    assert op_names(config("tokens"))[-1] == "tokenize"
    assert op_names(config("pixels"))[-1] == "render_text"


@pytest.mark.parametrize("kind, op, column", [("tokens", "tokenize", "tokens"), ("pixels", "render_text", "text_image")])
def test_one_text_encoding_names_op_and_column(kind, op, column):
    encoding = text_encoding(config(kind))
    assert (encoding.op_name, encoding.column, encoding.is_image) == (op, column, kind == "pixels")
    assert op_names(config(kind), ["clean_caption", op]) == ("clean_caption", op)  # the matching op is accepted


@pytest.mark.parametrize("kind, other", [("tokens", "render_text"), ("pixels", "tokenize")])
def test_text_op_of_the_other_kind_is_refused_not_swapped(kind, other):
    with pytest.raises(ConfigError, match=f"data.ops lists '{other}' but text_encoding.kind={kind}.*'encode_text'"):
        op_names(config(kind), ["clean_caption", other])


@pytest.mark.skipif(not os.path.exists(DEFAULT_FONT), reason=f"{DEFAULT_FONT} missing (apt-get install unifont)")
def test_pixels_stage_writes_text_image(tiny_data):
    table = pq.read_table(tiny_data / "train").slice(0, 60)
    batch = {k: table.column(k).to_numpy(zero_copy_only=False) for k in ("key", "caption", "jpg")}
    stats = PipelineStats()
    out = Preprocess(config("pixels"), train=True, stats=stats)(batch)
    assert set(out) == {"key", "image", "text_image"}
    n = len(out["key"])
    assert out["text_image"].dtype == np.uint8 and out["text_image"].shape == (n, 32, 32, 3)
    assert (out["text_image"] == 0).any() and (out["text_image"] == 127).any()
    assert stats.snapshot()["rows_out"] == n


def test_openai_tokens_stage(tiny_data):
    table = pq.read_table(tiny_data / "train").slice(0, 20)
    batch = {k: table.column(k).to_numpy(zero_copy_only=False) for k in ("key", "caption", "jpg")}
    out = Preprocess(config("tokens", tokenizer="openai"), train=True)(batch)
    assert out["tokens"].dtype == np.int32 and out["tokens"].shape[1] == 16
    assert (out["tokens"][:, 0] == 49406).all() and out["tokens"].max() == 49407


def test_missing_font_names_the_key(tmp_path, tiny_data):
    cfg = config("pixels", font=str(tmp_path / "missing.hex"))
    with pytest.raises(FileNotFoundError, match=r"text_encoding\.font.*apt-get install unifont"):
        Preprocess(cfg, train=True)
