"""ALBEF's loss pieces: feature queue, soft-target ITC, ITM hard negatives, MLM masking.

Pure functions and one small buffer class, so they can be tested without a model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class FeatureQueue:
    """A ring buffer of the last `size` momentum features (rows), oldest overwritten first.

    Unlike upstream ALBEF (which asserts queue_size % global_batch == 0), any number of rows can
    be pushed per step, so a restart at another world size (another global batch) just goes on.
    """

    def __init__(self, size: int, dim: int, device: torch.device) -> None:
        self.size = size
        self.data = torch.zeros(size, dim, device=device)
        self.ptr = 0
        self.filled = 0

    def keys(self) -> torch.Tensor:
        """The valid rows (filled, D); order does not matter to the loss."""
        return self.data[: self.filled]

    @torch.no_grad()
    def push(self, rows: torch.Tensor) -> None:
        if self.size == 0:
            return
        rows = rows.detach().to(self.data.dtype)[-self.size:]
        n = rows.shape[0]
        idx = (self.ptr + torch.arange(n, device=self.data.device)) % self.size
        self.data[idx] = rows
        self.ptr = (self.ptr + n) % self.size
        self.filled = min(self.size, self.filled + n)

    def chronological(self) -> torch.Tensor:
        """Valid rows, oldest first."""
        if self.filled < self.size:
            return self.data[: self.filled]
        return torch.cat([self.data[self.ptr:], self.data[: self.ptr]])

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.chronological().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the newest rows that fit (a checkpoint may come from another queue_size)."""
        self.data.zero_()
        self.ptr = self.filled = 0
        self.push(state["rows"].to(self.data.device))


def soft_target_itc(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, sim_i2t_m: torch.Tensor,
                    sim_t2i_m: torch.Tensor, alpha: float) -> torch.Tensor:
    """Image-text contrastive loss with momentum distillation.

    Each row i has its positive at column i (the first B columns are this batch's momentum
    features, the rest queue entries). Targets: alpha * softmax(momentum similarities) +
    (1 - alpha) * one-hot.
    """
    b = sim_i2t.shape[0]
    onehot = torch.zeros_like(sim_i2t)
    onehot[torch.arange(b), torch.arange(b)] = 1.0
    with torch.no_grad():
        t_i2t = alpha * F.softmax(sim_i2t_m, dim=1) + (1 - alpha) * onehot
        t_t2i = alpha * F.softmax(sim_t2i_m, dim=1) + (1 - alpha) * onehot
    loss_i2t = -(F.log_softmax(sim_i2t, dim=1) * t_i2t).sum(1).mean()
    loss_t2i = -(F.log_softmax(sim_t2i, dim=1) * t_t2i).sum(1).mean()
    return (loss_i2t + loss_t2i) / 2


@torch.no_grad()
def sample_hard_negatives(sim_i2t_local: torch.Tensor, sim_t2i_local: torch.Tensor,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each text an image index, and for each image a text index, drawn from this worker's
    batch with probability softmax(similarity), excluding the positive (the diagonal).

    Returns (neg_image_for_text (B,), neg_text_for_image (B,)). With B == 1 there is no other
    row, so the positive itself is returned (the ITM loss then sees a duplicate; use B >= 2).
    """
    b = sim_i2t_local.shape[0]
    if b == 1:
        zero = torch.zeros(1, dtype=torch.long, device=sim_i2t_local.device)
        return zero, zero
    eye = torch.eye(b, dtype=torch.bool, device=sim_i2t_local.device)
    w_i2t = F.softmax(sim_i2t_local.float(), dim=1).masked_fill(eye, 0) + 1e-12 * (~eye)
    w_t2i = F.softmax(sim_t2i_local.float(), dim=1).masked_fill(eye, 0) + 1e-12 * (~eye)
    neg_image = torch.multinomial(w_t2i, 1, generator=generator).squeeze(1)
    neg_text = torch.multinomial(w_i2t, 1, generator=generator).squeeze(1)
    return neg_image, neg_text


@torch.no_grad()
def mask_tokens(ids: torch.Tensor, *, pad: torch.Tensor, mask_id: int, regular_ids: int, probability: float,
                special_ids: tuple[int, ...], generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: `probability` of the caption tokens are chosen (never padding, where `pad` is
    True, nor `special_ids`); of those 80% become `mask_id`, 10% a random regular id (drawn from
    [0, regular_ids): the tokenizer's ids below its special tokens), 10% stay. Every row with a
    maskable token gets at least one. Returns (masked ids, labels with -100 where not chosen)."""
    ids = ids.long()
    eligible = ~pad
    for s in special_ids:
        eligible &= ids != s
    rand = torch.rand(ids.shape, device=ids.device, generator=generator)
    chosen = eligible & (rand < probability)
    # Rows that drew nothing: take their eligible token with the smallest draw.
    none = ~chosen.any(1) & eligible.any(1)
    if none.any():
        first = rand.masked_fill(~eligible, 2.0).argmin(1)
        chosen[none, first[none]] = True
    labels = ids.masked_fill(~chosen, -100)
    action = torch.rand(ids.shape, device=ids.device, generator=generator)
    masked = ids.clone()
    masked[chosen & (action < 0.8)] = mask_id
    swap = chosen & (action >= 0.8) & (action < 0.9)
    random_ids = torch.randint(0, regular_ids, ids.shape, device=ids.device, generator=generator)
    masked[swap] = random_ids[swap]
    return masked, labels


def distilled_mlm(logits: torch.Tensor, labels: torch.Tensor, logits_m: torch.Tensor | None,
                  alpha: float) -> torch.Tensor:
    """(1 - alpha) * CE + alpha * soft CE towards the momentum model, over the masked positions
    only: logits (M, V) and labels (M,) of the M masked tokens."""
    ce = F.cross_entropy(logits.float(), labels)
    if logits_m is None or alpha == 0:
        return ce
    soft = -(F.log_softmax(logits.float(), dim=-1) * F.softmax(logits_m.float(), dim=-1)).sum(-1).mean()
    return (1 - alpha) * ce + alpha * soft
