"""CLIPPO and ALBEF: shapes, parameter counts, loss pieces, and a few real training steps in one
process (LocalContext). CLIPPO's text images here are synthetic pixels (a colour block per
token), standing in for the data plane's render_text op."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipray.config import load_config
from clipray.losses.albef import FeatureQueue, mask_tokens, sample_hard_negatives, soft_target_itc
from clipray.models import build_model
from clipray.models.clip.presets import preset
from clipray.models.common.text import padding_mask
from clipray.models.summary import format_counts, parameter_counts
from clipray.train.context import LocalContext
from clipray.train.loop import train_loop
from clipray.train.objectives import build_objective
from tests.unit.test_loop_local import Recorder, batches_from

VIT = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2}
CLIPPO = {"name": "c", "text_encoding": {"kind": "pixels"},
          "model": {"family": "clippo", "embed_dim": 32, "vision": VIT},
          "optim": {"lr": 2e-3, "warmup_steps": 2},
          "train": {"global_batch_size": 16, "num_workers": 1, "log_every": 1, "checkpoint_every": 100}}
ALBEF = {"name": "a", "model": {"family": "albef", "embed_dim": 32, "vision": VIT,
                                "text": {"context_length": 16, "width": 32, "layers": 1, "heads": 2,
                                         "attn": "bidirectional", "pool": "first"},
                                "albef": {"fusion_layers": 1, "queue_size": 40}},
         "optim": {"lr": 2e-3, "warmup_steps": 2},
         "train": {"global_batch_size": 16, "num_workers": 1, "log_every": 1, "checkpoint_every": 5}}


def paint_tokens(tokens: np.ndarray, size: int = 32) -> np.ndarray:
    """uint8 (N, size, size, 3): token k of a caption is a 4x4 block whose colour hashes its id."""
    out = np.full((len(tokens), size, size, 3), 127, dtype=np.uint8)
    per_row = size // 4
    for n, row in enumerate(tokens):
        for k, tok in enumerate(t for t in row if t):
            r, c = divmod(k, per_row)
            if r >= per_row:
                break
            rng = np.random.default_rng(int(tok))
            out[n, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = rng.integers(0, 256, 3, dtype=np.uint8)
    return out


# -- CLIPPO -----------------------------------------------------------------------------------

def test_clippo_b16_has_about_half_the_parameters_of_clip_b16(capsys):
    clippo = parameter_counts(load_config("pipelines/clippo-b16.yaml").model)
    clip = parameter_counts(preset("vit-b16"))  # OpenAI's B/16: 512-wide text tower
    # The paper's CLIP* baseline: a B/16 image tower and a B-sized (768-wide) text tower.
    clip_b_text = parameter_counts(preset("vit-b16", embed_dim=768, text=preset("vit-l14").text))
    print(format_counts("clippo-b16", clippo))
    print(format_counts("clip-b16", clip))
    print(format_counts("clip-b16-btext", clip_b_text))
    assert clippo["vision"] == clippo["text"] == clippo["total"] - 1  # one tower for both (+ logit scale)
    ratio, ratio_b = clippo["total"] / clip["total"], clippo["total"] / clip_b_text["total"]
    print(f"clippo/clip-b16 {ratio:.3f}, clippo/clip-b16-btext {ratio_b:.3f}")
    assert 0.55 < ratio < 0.65 and 0.4 < ratio_b < 0.5
    assert "clippo-b16 parameters: vision 93.47M" in capsys.readouterr().out


def test_clippo_switches_add_per_modality_parts():
    base = build_model(load_config(data=CLIPPO).model)
    both = build_model(load_config(data=CLIPPO, overrides=["model.clippo.separate_patch_embed=true",
                                                           "model.clippo.separate_head=true"]).model)
    nb, nboth = base.parameter_counts(), both.parameter_counts()
    assert nboth["total"] > nb["total"] and nboth["shared"] < nboth["vision"]
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(base.encode_image(x), base.encode_text(x))  # shared everything: same function
    assert not torch.allclose(both.encode_image(x), both.encode_text(x))
    img, txt, scale = both(x, x)
    assert img.shape == txt.shape == (3, 32) and math.isclose(scale.item(), 1 / 0.07, rel_tol=1e-5)


def test_clippo_trains_on_pixel_text(tiny_data):
    cfg = load_config(data=CLIPPO, overrides=["train.steps=24"])
    token_cfg = load_config(data={**CLIPPO, "text_encoding": {"kind": "tokens"}, "model": {"embed_dim": 32, "vision": VIT,
                                                                                  "text": {"context_length": 16}}})
    token_batches = batches_from(tiny_data, token_cfg)

    def pixel_batches(epoch):
        for b in token_batches(epoch):
            yield {"image": b["image"], "text_image": torch.from_numpy(paint_tokens(b["tokens"].numpy()))}

    rec = Recorder()
    torch.set_num_threads(1)
    train_loop(cfg, LocalContext(pixel_batches), rec)
    first = sum(rec.steps[s]["train/loss"] for s in (1, 2, 3)) / 3
    last = sum(rec.steps[s]["train/loss"] for s in (22, 23, 24)) / 3
    assert last < first - 0.2, (first, last)


# -- ALBEF ------------------------------------------------------------------------------------

def test_feature_queue_is_a_ring_without_batch_divisibility():
    q = FeatureQueue(5, 2, torch.device("cpu"))
    q.push(torch.arange(6.0).view(3, 2))
    assert q.filled == 3
    q.push(torch.arange(6.0, 12.0).view(3, 2))  # 6 rows through a 5-row ring: the oldest is gone
    assert q.filled == 5 and q.chronological()[:, 0].tolist() == [2.0, 4.0, 6.0, 8.0, 10.0]
    bigger = FeatureQueue(8, 2, torch.device("cpu"))
    bigger.load_state_dict(q.state_dict())
    assert bigger.filled == 5 and torch.equal(bigger.chronological(), q.chronological())
    smaller = FeatureQueue(2, 2, torch.device("cpu"))
    smaller.load_state_dict(q.state_dict())  # keeps the newest rows that fit
    assert smaller.chronological()[:, 0].tolist() == [8.0, 10.0]


def test_hard_negatives_never_pick_the_positive():
    sim = torch.randn(6, 6) * 5
    sim.fill_diagonal_(100.0)  # even when the positive dominates the softmax
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        neg_img, neg_txt = sample_hard_negatives(sim, sim.T, generator=g)
        assert (neg_img != torch.arange(6)).all() and (neg_txt != torch.arange(6)).all()
    sim = torch.zeros(4, 4)
    sim[0, 3] = sim[3, 0] = 50.0  # image 0 and text 3 look alike: the hard negative
    assert sample_hard_negatives(sim, sim.T)[1][0] == 3


def test_mask_tokens_masks_real_tokens_only():
    ids = torch.zeros(64, 16, dtype=torch.long)
    ids[:, 0] = 998
    ids[:, 1:9] = torch.randint(0, 4, (64, 8))  # id 0 is a real token ("!" in OpenAI's vocabulary)
    ids[:, 9] = 999
    g = torch.Generator().manual_seed(0)
    masked, labels = mask_tokens(ids, pad=padding_mask(ids), mask_id=1000, regular_ids=998, probability=0.15,
                                 special_ids=(998, 999), generator=g)
    chosen = labels != -100
    assert chosen.any(1).all()  # at least one per caption
    assert not chosen[:, 0].any() and not chosen[:, 9:].any()  # never SOT, EOT or padding
    assert chosen[ids == 0].any()  # the caption's "!" tokens are maskable like any other
    assert torch.equal(labels[chosen], ids[chosen])
    frac_mask = (masked[chosen] == 1000).float().mean().item()
    assert 0.6 < frac_mask < 0.95
    assert torch.equal(masked[~chosen], ids[~chosen])
    assert masked[chosen & (masked != 1000)].max() < 998  # random replacements are regular ids


def test_soft_targets_with_alpha_zero_are_plain_infonce():
    torch.manual_seed(0)
    s = torch.randn(4, 10)
    loss = soft_target_itc(s, s, torch.randn(4, 10), torch.randn(4, 10), alpha=0.0)
    ref = torch.nn.functional.cross_entropy(s, torch.arange(4))
    assert torch.allclose(loss, ref)


def test_albef_trains_logs_three_losses_and_checkpoints_queues(tiny_data, tmp_path):
    torch.set_num_threads(1)
    cfg = load_config(data=ALBEF, overrides=["train.steps=12"])
    batches = batches_from(tiny_data, cfg)
    rec = Recorder()
    train_loop(cfg, LocalContext(batches, str(tmp_path)), rec)
    for name in ("train/itc_loss", "train/itm_loss", "train/mlm_loss"):
        assert all(name in rec.steps[s] and math.isfinite(rec.steps[s][name]) for s in range(1, 13))
    total = rec.steps[12]
    assert math.isclose(total["train/loss"], total["train/itc_loss"] + total["train/itm_loss"]
                        + total["train/mlm_loss"], rel_tol=1e-4)
    assert rec.steps[12]["train/queue_filled"] == 40  # 16 rows per step into a 40-row ring
    from clipray.models.checkpoint import read_state

    state = read_state(str(next(tmp_path.rglob("state.pt")).parent))["objective"]
    assert set(state) >= {"model", "momentum", "image_queue", "text_queue", "steps"}
    assert state["image_queue"]["rows"].shape == (40, 32) and state["steps"] == 12
    # The momentum model is an EMA: close to the online weights, but not equal to them.
    key = "visual.conv1.weight"
    diff = (state["momentum"][key] - state["model"][key]).abs().max()
    assert 0 < diff < (state["model"][key].abs().max())
    obj = build_objective(cfg, rank=0, world_size=1, device=torch.device("cpu"))
    obj.load_state_dict(state)
    assert obj.image_queue.filled == 40 and obj.steps == 12


def test_albef_mask_id_is_one_past_the_tokenizer_vocab():
    model = build_model(load_config(data=ALBEF).model)
    assert model.mask_id == 49408 and model.token_embedding.num_embeddings == 49409
    counts = model.parameter_counts()
    assert counts["vision"] + counts["text"] + counts["fusion"] + 1 == counts["total"]  # + temperature


@pytest.mark.parametrize("text, fusion", [(2, 1), (1, 3)])
def test_albef_depths_are_configurable(text, fusion):
    cfg = load_config(data=ALBEF, overrides=[f"model.text.layers={text}", f"model.albef.fusion_layers={fusion}"])
    model = build_model(cfg.model)
    assert len(model.transformer.resblocks) == text and len(model.fusion) == fusion
