"""Padding is where a caption ends, never a token id; tokenizer and text tower agree on ids.

Id 0 fills the positions after end-of-text, and it is also "!" in OpenAI's vocabulary. The
reference for every text encoder here is each caption run alone, cut at its end-of-text token:
no padding at all, so no mask is involved. A batch of padded captions (padding filled with 0,
or with arbitrary ids) must give the same outputs, whatever "!" the captions hold.
"""

from __future__ import annotations

import copy

import pytest
import torch

from clipray.config import ConfigError, load_config
from clipray.models import build_model
from clipray.models.common.text import TextTransformer, padding_mask
from clipray.text import load_tokenizer
from clipray.text.encoding import text_encoding
from tests.unit.test_families import ALBEF as _ALBEF


def albef(**sections) -> dict:
    """A fresh copy of the tiny ALBEF pipeline: load_config's overrides edit the dict in place."""
    return {**copy.deepcopy(_ALBEF), **copy.deepcopy(sections)}


CONTEXT = 16
# "!~" and "!{" are encoded with id 0 ("!") in OpenAI's vocabulary; the others hold no id 0.
CAPTIONS = ["hi !~ there", "a dog !~ on grass !{", "plain caption", "!~ !~ !~", "x", "wow !~"]


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    rows = torch.from_numpy(load_tokenizer("openai", CONTEXT)(CAPTIONS)).long()
    end = rows.argmax(1)
    inside = [(rows[i, 1 : end[i]] == 0).any().item() for i in range(len(CAPTIONS))]
    assert inside == [True, True, False, True, False, True], rows  # the captions do hold "!" = id 0
    return rows


def _by_hand(tower: TextTransformer, ids_BL: torch.Tensor) -> torch.Tensor:
    """The tower's computation written out for each caption alone, cut after its EOT: every
    position is a caption token, so no padding mask and pooling over all positions."""
    out = []
    for row in ids_BL:
        n = int(row.argmax()) + 1
        x = tower.token_embedding(row[None, :n]) + tower.positional_embedding[:n]
        mask = torch.full((n, n), float("-inf")).triu_(1) if tower.attn_kind == "causal" else None
        x = tower.ln_final(tower.transformer(x, attn_mask=mask))
        pooled = x[:, 0] if tower.pool == "first" else x.mean(1)
        out.append(pooled @ tower.text_projection)
    return torch.cat(out)


def _junk_padding(ids_BL: torch.Tensor) -> torch.Tensor:
    """The same captions with arbitrary regular ids after EOT instead of zeros."""
    out = ids_BL.clone()
    junk = torch.randint(0, 1000, out.shape, generator=torch.Generator().manual_seed(1))
    return torch.where(padding_mask(ids_BL), junk, out)


def test_padding_mask_is_after_the_first_eot():
    ids = torch.tensor([[7, 0, 0, 9, 0, 0], [7, 9, 3, 9, 0, 0], [0, 0, 0, 0, 0, 0]])
    assert padding_mask(ids).tolist() == [[False] * 4 + [True] * 2,  # the 0s before EOT are tokens
                                          [False, False] + [True] * 4,  # a second EOT is padding
                                          [False] + [True] * 5]  # no EOT: only the first position


@pytest.mark.parametrize("pool", ["first", "mean"])
def test_bidirectional_tower_ignores_padding_not_exclamation_marks(ids, pool):
    torch.manual_seed(0)
    tower = TextTransformer(CONTEXT, 49408, width=32, layers=2, heads=4, output_dim=16, attn="bidirectional",
                            pool=pool).eval()
    with torch.no_grad():
        batch = tower(ids)
        reference = _by_hand(tower, ids)
        junk = tower(_junk_padding(ids))
    torch.testing.assert_close(batch, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(junk, batch, rtol=1e-5, atol=1e-6)


def test_causal_mean_pooled_tower_ignores_padding(ids):
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="prefix-weighted"):
        cfg = load_config(data={"name": "t", "model": {"text": {"context_length": CONTEXT, "width": 32, "layers": 1,
                                                                 "heads": 4, "pool": "mean"}}})
    t = cfg.model.text
    tower = TextTransformer(CONTEXT, t.vocab_size, t.width, t.layers, t.heads, 16, attn=t.attn, pool=t.pool).eval()
    with torch.no_grad():
        torch.testing.assert_close(tower(ids), _by_hand(tower, ids), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tower(_junk_padding(ids)), tower(ids), rtol=1e-5, atol=1e-6)


def test_albef_text_and_fusion_encoders_ignore_padding_not_exclamation_marks(ids):
    torch.manual_seed(0)
    model = build_model(load_config(data=albef()).model).eval()
    images = torch.randn(len(ids), 3, 32, 32)
    with torch.no_grad():
        image_tokens = model.image_tokens(images)
        # Text encoder ([CLS] features) and fusion encoder (every state of the caption's positions).
        feat = model.encode_text(ids)
        fused = model.fuse(model.text_hidden(ids), padding_mask(ids), image_tokens)
        assert torch.equal(model.encode_text(_junk_padding(ids)), feat)
        ends = ids.argmax(1)
        for i in range(len(ids)):
            row = ids[i : i + 1, : int(ends[i]) + 1]
            no_pad = torch.zeros_like(row, dtype=torch.bool)
            torch.testing.assert_close(feat[i : i + 1], model.text_feat(model.text_hidden(row, no_pad)),
                                       rtol=1e-5, atol=1e-6)
            alone = model.fuse(model.text_hidden(row, no_pad), no_pad, image_tokens[i : i + 1])
            torch.testing.assert_close(fused[i : i + 1, : row.shape[1]], alone, rtol=1e-5, atol=1e-6)
        # MLM: a masked caption may lose its EOT (the mask id is above it); its padding is that of
        # the unmasked caption, so masking changes no padding decision.
        masked = ids.clone()
        masked[torch.arange(len(ids)), ends] = model.mask_id
        pad = padding_mask(ids)
        hidden = model.text_hidden(masked, pad)
        for i in range(len(ids)):
            row = masked[i : i + 1, : int(ends[i]) + 1]
            alone = model.text_hidden(row, torch.zeros_like(row, dtype=torch.bool))
            torch.testing.assert_close(hidden[i : i + 1, : row.shape[1]], alone, rtol=1e-5, atol=1e-6)


# -- tokenizer and text tower agree -----------------------------------------------------------

@pytest.fixture(scope="module")
def trained_vocab(tmp_path_factory) -> str:
    from clipray.text.captions import varied_captions
    from clipray.text.train_bpe import train_tokenizer

    path = tmp_path_factory.mktemp("vocab") / "vocab.json"
    train_tokenizer(varied_captions(400, seed=0), 600, min_frequency=1).save(str(path))
    return str(path)


def test_vocabulary_too_large_for_the_tower_is_refused_naming_both_sizes(trained_vocab):
    tok = load_tokenizer(trained_vocab)
    text = {"tokenizer": trained_vocab}
    fits = load_config(data=albef(text_encoding=text), overrides=[f"model.text.vocab_size={tok.vocab_size}"])
    text_encoding(fits).check_vocabulary()
    small = load_config(data=albef(text_encoding=text), overrides=[f"model.text.vocab_size={tok.vocab_size - 1}"])
    with pytest.raises(ConfigError) as e:
        text_encoding(small).check_vocabulary()
    assert str(e.value) == (f"text_encoding.tokenizer {trained_vocab!r} has {tok.vocab_size} ids but model.text.vocab_size is "
                            f"{tok.vocab_size - 1}: set model.text.vocab_size to at least {tok.vocab_size}")
    words = load_config(data=albef(), overrides=["model.text.vocab_size=1000"])  # `words`
    with pytest.raises(ConfigError, match=r"has 49408 ids but model\.text\.vocab_size is 1000"):
        text_encoding(words).check_vocabulary()
    pixels = load_config(data={"name": "p", "text_encoding": {"kind": "pixels"}, "model": {"family": "clippo"}})
    text_encoding(pixels).check_vocabulary()  # no vocabulary to check


def test_albef_takes_its_special_ids_from_a_trained_tokenizer(trained_vocab):
    from clipray.train.objectives import build_objective

    tok = load_tokenizer(trained_vocab, CONTEXT)
    assert tok.sot_id < 49406  # a trained vocabulary: SOT far below the tower's default vocab_size - 2
    cfg = load_config(data=albef(text_encoding={"tokenizer": trained_vocab}))
    obj = build_objective(cfg, rank=0, world_size=1, device=torch.device("cpu"))
    assert (obj.sot_id, obj.eot_id, obj.regular_ids) == (tok.sot_id, tok.eot_id, tok.sot_id)
    assert obj.module.mask_id == cfg.model.text.vocab_size >= tok.vocab_size  # never a real token
    torch.manual_seed(0)
    ids = torch.from_numpy(tok(["a red square on a blue field", "two cats !", "x"] * 6)).long()
    batch = {"image": torch.randint(0, 256, (len(ids), 32, 32, 3), dtype=torch.uint8), "tokens": ids}
    from clipray.losses.albef import mask_tokens

    masked, labels = mask_tokens(ids, pad=padding_mask(ids), mask_id=obj.module.mask_id,
                                 regular_ids=obj.regular_ids, probability=0.5,
                                 special_ids=(obj.sot_id, obj.eot_id), generator=torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert not chosen[ids == tok.sot_id].any() and not chosen[ids == tok.eot_id].any()
    assert masked[chosen & (masked != obj.module.mask_id)].max() < tok.sot_id
    losses, _ = obj(batch)
    assert all(torch.isfinite(v) for v in losses.values())
