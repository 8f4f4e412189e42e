"""Sharded softmax contrastive loss (CLIP/InfoNCE).

Each worker scores its B local rows against the N = W·B all-gathered rows of the other
modality, so the logits are B x N per worker, never N x N. The gather is autograd-aware
(its backward is a reduce-scatter), so every worker's features receive the gradient of every
worker's loss terms. With DDP averaging parameter gradients over W workers, the result is
exactly the gradient of the full-batch loss  L = (1/2N) Σ_i [CE(img_i→txt) + CE(txt_i→img)].

Each direction's cross-entropy is one autograd function that saves only its inputs and the
row log-sum-exp, and recomputes the B x N logits in the backward pass: at most one B x N
matrix (plus one temporary) is alive at a time, instead of the logits, their scaled copy and
their log-softmax for both directions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor, world_size: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate `x` (B, D) from all workers along dim 0, keeping gradients to every shard."""
    if world_size == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x, group=group if group is not None else dist.group.WORLD), dim=0)


class _RowsCrossEntropy(torch.autograd.Function):
    """mean_i CE(scale · q_i · keys^T, label offset+i), logits recomputed in backward."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor, offset: int) -> torch.Tensor:
        b = q.shape[0]
        logits = (q @ keys.T).mul_(scale)
        rows = torch.arange(b, device=q.device)
        positives = logits[rows, rows + offset]
        lse = torch.logsumexp(logits, dim=1)
        ctx.save_for_backward(q, keys, scale, lse)
        ctx.offset = offset
        return (lse - positives).mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, keys, scale, lse = ctx.saved_tensors
        b = q.shape[0]
        rows = torch.arange(b, device=q.device)
        raw = q @ keys.T  # unscaled: d loss / d scale = Σ dlogits · raw
        probs = (raw * scale).sub_(lse[:, None]).exp_()  # softmax, built in place
        probs[rows, rows + ctx.offset] -= 1
        probs.mul_(grad / b)  # now d loss / d logits
        grad_scale = torch.vdot(probs.reshape(-1), raw.reshape(-1)) if ctx.needs_input_grad[2] else None
        del raw
        grad_q = (probs @ keys).mul_(scale) if ctx.needs_input_grad[0] else None
        grad_keys = (probs.T @ q).mul_(scale) if ctx.needs_input_grad[1] else None
        return grad_q, grad_keys, grad_scale, None


def softmax_contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, *,
                             rank: int = 0, world_size: int = 1,
                             group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Mean of image→text and text→image cross-entropy for this worker's rows.

    Args:
        image, text: L2-normalised local features (B, D); row i of each is a positive pair.
        logit_scale: exponentiated temperature (scalar).
        rank, world_size, group: the process group whose workers hold the other rows.
    Returns:
        This worker's mean loss; the mean over workers equals the full-batch loss.
    """
    all_image = gather_with_grad(image, world_size, group)
    all_text = gather_with_grad(text, world_size, group)
    b = image.shape[0]
    scale = logit_scale.to(image.dtype)
    i2t = _RowsCrossEntropy.apply(image, all_text, scale, rank * b)  # B x N logits, one at a time
    t2i = _RowsCrossEntropy.apply(text, all_image, scale, rank * b)
    return (i2t + t2i) / 2


def naive_softmax_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The full N x N reference on one process (tests and benchmarks)."""
    logits = logit_scale * image @ text.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
