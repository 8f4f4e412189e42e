"""ALBEF's momentum distillation (alpha > 0) against a hand computation in plain Python floats.

ITC: targets alpha * softmax(momentum similarities) + (1 - alpha) * one-hot (the positive of row i
is column i; the columns after the batch are queue entries), loss the mean over rows of the cross
entropy with those targets, averaged over both directions. MLM: (1 - alpha) * CE with the labels +
alpha * CE with the momentum model's softmax. Li et al., "Align before Fuse" (2021), eq. 6-7.
"""

from __future__ import annotations

import math

import pytest
import torch

from clipray.config import load_config
from clipray.losses.albef import distilled_mlm, soft_target_itc
from tests.unit.test_text_padding import albef


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def _log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    lse = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - lse for v in row]


def _soft_ce(logits: list[list[float]], targets: list[list[float]]) -> float:
    """Mean over rows of -sum_j target_j * log_softmax(logits)_j."""
    return sum(-sum(t * lp for t, lp in zip(trow, _log_softmax(lrow))) for lrow, trow in zip(logits, targets)) \
        / len(logits)


def _itc_targets(sim_m: list[list[float]], alpha: float) -> list[list[float]]:
    return [[alpha * p + (1 - alpha) * (i == j) for j, p in enumerate(_softmax(row))] for i, row in enumerate(sim_m)]


def _hand_itc(sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m, alpha: float) -> float:
    return (_soft_ce(sim_i2t, _itc_targets(sim_i2t_m, alpha)) + _soft_ce(sim_t2i, _itc_targets(sim_t2i_m, alpha))) / 2


@pytest.mark.parametrize("alpha", [0.4, 1.0])
def test_soft_target_itc_equals_the_hand_computation(alpha):
    g = torch.Generator().manual_seed(0)
    b, keys = 3, 7  # 3 batch columns, then 4 queue entries
    sims = [torch.randn(b, keys, generator=g, dtype=torch.float64) * 4 for _ in range(4)]
    sim_i2t, sim_t2i = (s.clone().requires_grad_(True) for s in sims[:2])
    loss = soft_target_itc(sim_i2t, sim_t2i, sims[2], sims[3], alpha)
    rows = [s.tolist() for s in sims]
    assert loss.item() == pytest.approx(_hand_itc(*rows, alpha), rel=1e-12)
    # d loss / d sim_i2t[i, j] = (softmax(sim_i2t[i])_j - target_ij) / (2 B): the momentum targets
    # are constants (no gradient flows into the momentum model).
    loss.backward()
    targets = _itc_targets(rows[2], alpha)
    expected = [[(p - t) / (2 * b) for p, t in zip(_softmax(r), tr)] for r, tr in zip(rows[0], targets)]
    torch.testing.assert_close(sim_i2t.grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    # The distillation changes the loss: alpha = 0 is the plain one-hot InfoNCE.
    assert abs(loss.item() - soft_target_itc(*sims, 0.0).item()) > 1e-3


def test_distilled_mlm_equals_the_hand_computation():
    g = torch.Generator().manual_seed(1)
    logits, logits_m = torch.randn(4, 6, generator=g) * 3, torch.randn(4, 6, generator=g) * 3
    labels = torch.tensor([0, 5, 2, 2])
    alpha = 0.4
    rows, rows_m = logits.double().tolist(), logits_m.double().tolist()
    ce = _soft_ce(rows, [[float(j == y) for j in range(6)] for y in labels.tolist()])
    soft = _soft_ce(rows, [_softmax(r) for r in rows_m])
    got = distilled_mlm(logits, labels, logits_m, alpha).item()
    assert got == pytest.approx((1 - alpha) * ce + alpha * soft, rel=1e-5)
    assert distilled_mlm(logits, labels, logits_m, 0.0).item() == pytest.approx(ce, rel=1e-5)


def test_albef_objective_itc_with_alpha_distils_from_the_momentum_model_and_queue():
    """One training step's ITC loss, recomputed by hand from the online and momentum encoders'
    features and the queued momentum features (alpha = 0.4, a queue already holding a step)."""
    from clipray.models.common.image import to_model_input
    from clipray.text import load_tokenizer
    from clipray.train.objectives import build_objective

    torch.manual_seed(0)
    cfg = load_config(data=albef(), overrides=["model.albef.alpha=0.4", "model.albef.momentum=0.5"])
    obj = build_objective(cfg, rank=0, world_size=1, device=torch.device("cpu"))
    tok = load_tokenizer(cfg.text_encoding.tokenizer, cfg.model.text.context_length)
    captions = ["a red square", "two blue circles", "a green cross !", "an empty field"]
    batch = {"image": torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8),
             "tokens": torch.from_numpy(tok(captions)).long()}
    obj(batch)  # step 1 fills the queue with 4 momentum features per modality
    with torch.no_grad():
        for p in obj.module.parameters():  # an optimizer step: the momentum model now lags behind
            p.add_(0.05 * torch.randn_like(p))
    obj.after_step()
    assert obj.image_queue.filled == 4 and obj.alpha() == 0.4

    images = to_model_input(batch["image"], cfg.image.mean, cfg.image.std)
    ids = batch["tokens"]
    with torch.no_grad():
        m, mm = obj.module, obj.momentum
        img, txt = m.image_feat(m.image_tokens(images)), m.text_feat(m.text_hidden(ids))
        img_m, txt_m = mm.image_feat(mm.image_tokens(images)), mm.text_feat(mm.text_hidden(ids))
        temp = m.temp.item()
        image_keys = torch.cat([img_m, obj.image_queue.keys()]).double()
        text_keys = torch.cat([txt_m, obj.text_queue.keys()]).double()
    sims = [(img.double() @ text_keys.T / temp).tolist(), (txt.double() @ image_keys.T / temp).tolist(),
            (img_m.double() @ text_keys.T / temp).tolist(), (txt_m.double() @ image_keys.T / temp).tolist()]
    losses, _ = obj(batch)
    assert len(sims[0][0]) == 8  # 4 batch keys + 4 queued
    assert losses["itc_loss"].item() == pytest.approx(_hand_itc(*sims, 0.4), rel=1e-5)
    assert losses["itc_loss"].item() != pytest.approx(_hand_itc(*sims, 0.0), rel=1e-3)  # alpha mattered
