"""Sigmoid (SigLIP) loss over a ring of workers: a worker's memory does not grow with their number.

Full-batch loss over N = W·B pairs:

    L = -(1/N) Σ_i Σ_j log σ(z_ij · (t·⟨x_i, y_j⟩ + b)),   z_ij = +1 if i = j else -1

Worker r scores its B images against its own B texts (the block with the positives), then
passes its current text chunk to rank r+1 and receives one from rank r-1, W-1 times, adding
negative-only B×B blocks. The whole ring is one autograd function that keeps only the worker's
own inputs for backward. Its backward passes the text chunks around the ring again, recomputing
each block; each chunk's gradient starts at its owner (the positive block), travels with the
chunk, gathering every worker's contribution, and after the last step goes on to the owner.
So a worker holds, besides its own features, at most two text chunks in forward and two chunks
and two chunk gradients plus its image gradient in backward, and a few B×B blocks:
O(B·D + B²) memory at any W, where keeping the received chunks for backward took O(N·D)
(tests/distributed/test_contrastive_gloo.py::test_ring_sigmoid_memory_independent_of_world_size).
The next chunk is in flight while the current block is computed.

Each worker returns its own sum / B; the mean over workers (what DDP's gradient average
produces) is exactly L, as for `softmax_contrastive_loss`. Forward and backward run in fp32
under autocast (clipray.losses.precision). docs/losses.md has the communication cost.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from clipray.losses.precision import autocast_off, compute_dtype


class _Ring:
    """Point-to-point passes to rank+1, receiving from rank-1, in the ring of `group`."""

    def __init__(self, rank: int, world_size: int, group: dist.ProcessGroup | None) -> None:
        self.world_size = world_size
        self.group = group
        self.to_rank = _global_rank(group, (rank + 1) % world_size)
        self.from_rank = _global_rank(group, (rank - 1) % world_size)

    def start(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
        """Send `x` on and start receiving a tensor like it; `wait` returns what arrived.

        Every worker starts its passes in the same order, so sends and receives pair up in order.
        """
        x = x.contiguous()
        out = torch.empty_like(x)
        ops = [dist.P2POp(dist.isend, x, self.to_rank, group=self.group),
               dist.P2POp(dist.irecv, out, self.from_rank, group=self.group)]
        return out, dist.batch_isend_irecv(ops)

    @staticmethod
    def wait(pending: tuple[torch.Tensor, list[Any]]) -> torch.Tensor:
        out, requests = pending
        for req in requests:  # the send too: its buffer may be freed once this returns
            req.wait()
        return out


def _global_rank(group: dist.ProcessGroup | None, group_rank: int) -> int:
    if group is None or group is dist.group.WORLD:
        return group_rank
    return dist.get_global_rank(group, group_rank)


def _signed_logits(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                   positives: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw = x·yᵀ, z · (t·raw + b)): z = +1 on the diagonal of the block with the positives,
    -1 elsewhere, applied in place rather than as a B×B sign matrix."""
    raw = image @ text.T
    zl = (raw * scale).add_(bias).neg_()
    if positives:
        zl.diagonal().neg_()
    return raw, zl


def _block_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                positives: bool) -> torch.Tensor:
    """Σ -log σ(z · (t·x·yᵀ + b)) over one block."""
    return -F.logsigmoid(_signed_logits(image, text, scale, bias, positives)[1]).sum()


def _block_grads(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                 positives: bool, grad: torch.Tensor, grad_image: torch.Tensor | None,
                 grad_text: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`grad` x the gradient of `_block_loss` w.r.t. (image, text, scale, bias); the image and
    text gradients are added into `grad_image` / `grad_text` where given (no temporary copy)."""
    raw, zl = _signed_logits(image, text, scale, bias, positives)
    # d/dl [-log σ(z·l)] = -z · σ(-z·l): σ(-z·l) where z = -1, its negative on the positive diagonal.
    dlogits = zl.neg_().sigmoid_()
    if positives:
        dlogits.diagonal().neg_()
    dlogits.mul_(grad)
    grad_scale = torch.vdot(dlogits.reshape(-1), raw.reshape(-1))
    grad_bias = dlogits.sum()
    del raw
    draw = dlogits.mul_(scale)  # d loss / d (x·yᵀ)
    grad_image = draw @ text if grad_image is None else grad_image.addmm_(draw, text)
    grad_text = draw.T @ image if grad_text is None else grad_text.addmm_(draw.T, image)
    return grad_image, grad_text, grad_scale, grad_bias


class _SigmoidRing(torch.autograd.Function):
    """This worker's Σ of log-sigmoid terms over its B images and all N texts, the texts passed
    around `ring` (None: one worker) in forward and again in backward (module docstring).

    A pass's buffers are dropped as soon as it completes (`pending = None` before the next
    `start`). Alive at once, each B x D, besides the inputs and a few B x B blocks: forward, the
    chunk being scored and the next one arriving (2); backward, those two, the image gradient and
    the current chunk's gradient being sent on while its successor's arrives (5). None of this
    depends on W.
    """

    @staticmethod
    def forward(ctx: Any, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                ring: _Ring | None) -> torch.Tensor:
        dtype = compute_dtype(image, text)
        steps = ring.world_size - 1 if ring is not None else 0
        with autocast_off(image.device):
            x, y, t, b = image.to(dtype), text.to(dtype), scale.to(dtype), bias.to(dtype)
            pending = ring.start(y) if ring is not None and steps else None
            total = _block_loss(x, y, t, b, positives=True)
            for step in range(1, steps + 1):
                assert ring is not None and pending is not None
                chunk, pending = ring.wait(pending), None  # the texts of rank - step
                if step < steps:
                    pending = ring.start(chunk)
                total += _block_loss(x, chunk, t, b, positives=False)
                del chunk
        ctx.save_for_backward(image, text, scale, bias)
        ctx.ring = ring
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        image, text, scale, bias = ctx.saved_tensors
        ring: _Ring | None = ctx.ring
        dtype = compute_dtype(image, text)
        steps = ring.world_size - 1 if ring is not None else 0
        with autocast_off(image.device):
            x, y, t, b, grad = image.to(dtype), text.to(dtype), scale.to(dtype), bias.to(dtype), grad.to(dtype)
            pending = ring.start(y) if ring is not None and steps else None
            # Our texts' gradient starts with our own block and travels with them around the ring.
            grad_image, text_grad, grad_scale, grad_bias = _block_grads(x, y, t, b, True, grad, None, None)
            if ring is None or not steps:
                return _in_dtypes((grad_image, text_grad, grad_scale, grad_bias), (image, text, scale, bias))
            pending_grad = ring.start(text_grad)
            del text_grad
            for step in range(1, steps + 1):
                assert pending is not None
                chunk, pending = ring.wait(pending), None  # the texts of rank - step, as in forward
                if step < steps:
                    pending = ring.start(chunk)
                # Their gradient so far: from their owner and the ranks between it and this one.
                chunk_grad = ring.wait(pending_grad)
                del pending_grad  # frees the previous send's buffer before the next pass
                _, chunk_grad, g_scale, g_bias = _block_grads(x, chunk, t, b, False, grad, grad_image, chunk_grad)
                del chunk
                grad_scale += g_scale
                grad_bias += g_bias
                # On to rank+1: the next to score this chunk or, after the last step, its owner.
                pending_grad = ring.start(chunk_grad)
                del chunk_grad
            grad_text = ring.wait(pending_grad)  # our texts' gradient, back from every worker
        return _in_dtypes((grad_image, grad_text, grad_scale, grad_bias), (image, text, scale, bias))


def _in_dtypes(grads: tuple[torch.Tensor, ...], inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor | None, ...]:
    """The gradients cast to their inputs' dtypes, and None for the ring argument."""
    return (*(g.to(x.dtype) for g, x in zip(grads, inputs)), None)


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
        (1/B) × the sum of this worker's log-sigmoid terms (fp32, or fp64 for fp64 features, also
        under autocast); the mean over workers is the full loss.
    """
    ring = _Ring(rank, world_size, group) if world_size > 1 else None
    return _SigmoidRing.apply(image, text, logit_scale, logit_bias, ring) / image.shape[0]


def _signs(logits: torch.Tensor) -> torch.Tensor:
    """z: +1 on the diagonal, -1 elsewhere (the full-matrix reference)."""
    z = -torch.ones_like(logits)
    z.diagonal().fill_(1)
    return z


def naive_sigmoid_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                       logit_bias: torch.Tensor) -> torch.Tensor:
    """The full N×N reference on one process, plain autograd (tests and benchmarks)."""
    logits = logit_scale * image @ text.T + logit_bias
    return -F.logsigmoid(_signs(logits) * logits).sum() / image.shape[0]
