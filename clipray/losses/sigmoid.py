"""Sigmoid (SigLIP) loss over a ring of workers: no worker ever holds every feature.

Full-batch loss over N = W·B pairs:

    L = -(1/N) Σ_i Σ_j log σ(z_ij · (t·⟨x_i, y_j⟩ + b)),   z_ij = +1 if i = j else -1

Worker r scores its B images against its own B texts (the block with the positives), then
passes its current text chunk to rank r+1 and receives one from rank r-1, W-1 times, adding
negative-only B×B blocks. Logit memory is O(B²) and at most two text chunks are alive. The
exchange is an autograd function whose backward sends the chunk's gradient back the way it
came, so every worker's text features receive the gradient of every worker's loss terms.
Each worker returns its own sum / B; the mean over workers (what DDP's gradient average
produces) is exactly L, as for `softmax_contrastive_loss`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _exchange(x: torch.Tensor, to_rank: int, from_rank: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Send `x` to `to_rank` and return what `from_rank` sent (same shape and dtype)."""
    out = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x.contiguous(), to_rank, group=group),
           dist.P2POp(dist.irecv, out, from_rank, group=group)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return out


class NeighbourExchange(torch.autograd.Function):
    """Forward: x goes to `to_rank`, the result comes from `from_rank`. Backward: the reverse."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, to_rank: int, from_rank: int,
                group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.to_rank, ctx.from_rank, ctx.group = to_rank, from_rank, group
        return _exchange(x, to_rank, from_rank, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return _exchange(grad, ctx.from_rank, ctx.to_rank, ctx.group), None, None, None


def _global_rank(group: dist.ProcessGroup | None, group_rank: int) -> int:
    if group is None or group is dist.group.WORLD:
        return group_rank
    return dist.get_global_rank(group, group_rank)


def _signs(logits: torch.Tensor, positives: bool) -> torch.Tensor:
    """z: +1 on the diagonal of the block with the positives, -1 elsewhere."""
    z = -torch.ones_like(logits)
    if positives:
        z.diagonal().fill_(1)
    return z


class _SigmoidBlock(torch.autograd.Function):
    """Σ -log σ(z · (t·x·yᵀ + b)) over one block; saves inputs only, recomputes in backward."""

    @staticmethod
    def forward(ctx: Any, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                positives: bool) -> torch.Tensor:
        logits = (image @ text.T).mul_(scale).add_(bias)
        ctx.save_for_backward(image, text, scale, bias)
        ctx.positives = positives
        return -F.logsigmoid(logits.mul_(_signs(logits, positives))).sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        image, text, scale, bias = ctx.saved_tensors
        raw = image @ text.T
        z = _signs(raw, ctx.positives)
        # d/dl [-log σ(z·l)] = -z · σ(-z·l)
        dlogits = (raw * scale).add_(bias).mul_(z).neg_().sigmoid_().mul_(z).mul_(-grad)
        del z
        grad_scale = torch.vdot(dlogits.reshape(-1), raw.reshape(-1)) if ctx.needs_input_grad[2] else None
        grad_bias = dlogits.sum() if ctx.needs_input_grad[3] else None
        del raw
        grad_image = (dlogits @ text).mul_(scale) if ctx.needs_input_grad[0] else None
        grad_text = (dlogits.T @ image).mul_(scale) if ctx.needs_input_grad[1] else None
        return grad_image, grad_text, grad_scale, grad_bias, None


def _block_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                positives: bool) -> torch.Tensor:
    dtype = image.dtype
    return _SigmoidBlock.apply(image, text, scale.to(dtype), bias.to(dtype), positives)


def sigmoid_contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                             logit_bias: torch.Tensor, *, rank: int = 0, world_size: int = 1,
                             group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """This worker's share of the SigLIP loss, its text passed around the ring.

    Args:
        image, text: L2-normalised local features (B, D); row i of each is a positive pair.
            Every worker must hold the same B.
        logit_scale: exponentiated temperature t (scalar); logit_bias: b (scalar).
        rank, world_size: this worker's rank in `group` (default: the world group) and its size.
    Returns:
        (1/B) × the sum of this worker's log-sigmoid terms; the mean over workers is the full loss.
    """
    b = image.shape[0]
    loss = _block_loss(image, text, logit_scale, logit_bias, positives=True)
    if world_size > 1:
        to_rank = _global_rank(group, (rank + 1) % world_size)
        from_rank = _global_rank(group, (rank - 1) % world_size)
        chunk = text
        for _ in range(world_size - 1):
            chunk = NeighbourExchange.apply(chunk, to_rank, from_rank, group)
            loss = loss + _block_loss(image, chunk, logit_scale, logit_bias, positives=False)
    return loss / b


def naive_sigmoid_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                       logit_bias: torch.Tensor) -> torch.Tensor:
    """The full N×N reference on one process, plain autograd (tests and benchmarks)."""
    logits = logit_scale * image @ text.T + logit_bias
    return -F.logsigmoid(_signs(logits, positives=True) * logits).sum() / image.shape[0]
