"""Sharded softmax contrastive loss (CLIP/InfoNCE).

Each worker scores its B local rows against the N = W·B all-gathered rows of the other
modality, so the logits are B x N per worker, never N x N. The gather is autograd-aware
(its backward is a reduce-scatter), so every worker's features receive the gradient of every
worker's loss terms. With DDP averaging parameter gradients over W workers, the result is
exactly the gradient of the full-batch loss  L = (1/2N) Σ_i [CE(img_i→txt) + CE(txt_i→img)].

Each direction's cross-entropy is one autograd function that saves only its inputs and the
row log-sum-exp, builds the logits a block of rows at a time and recomputes them in the backward
pass: at most ROW_CHUNK x N logits (plus one temporary) are alive, instead of the B x N logits,
their scaled copy and their log-softmax for both directions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from clipray.losses.precision import autocast_off, compute_dtype


def gather_with_grad(x: torch.Tensor, world_size: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate `x` (B, D) from all workers along dim 0, keeping gradients to every shard."""
    if world_size == 1:
        return x
    return _AllGather.apply(x, group if group is not None else dist.group.WORLD)


def _collective(new: str, old: str) -> Any:
    """A single-tensor collective: torch 2.13 renamed `*_tensor` to `*_single` (and warns on the old
    names); torch before 2.13 has only the old ones."""
    return getattr(dist, new, None) or getattr(dist, old)


class _AllGather(torch.autograd.Function):
    """All-gather along dim 0; the backward sums every rank's gradient of this rank's rows
    (a reduce-scatter), since every rank's loss terms read them."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        out = x.new_empty((dist.get_world_size(group) * x.shape[0], *x.shape[1:]))
        _collective("all_gather_single", "all_gather_into_tensor")(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = grad.new_empty((grad.shape[0] // dist.get_world_size(ctx.group), *grad.shape[1:]))
        _collective("reduce_scatter_single", "reduce_scatter_tensor")(out, grad.contiguous(), group=ctx.group)
        return out, None


ROW_CHUNK = 256  # rows of logits materialised at once (forward and backward)


class _RowsCrossEntropy(torch.autograd.Function):
    """mean_i CE(scale · q_i · keys^T, label offset+i); logits built ROW_CHUNK rows at a time and
    recomputed in backward, so at most ROW_CHUNK x N of them (plus one temporary) are alive.

    Forward and backward both run in `compute_dtype` (fp32 under bf16 autocast) with autocast
    off: the backward's softmax is exp(logits - lse) with the forward's lse, so the two passes
    must build their logits in one precision (clipray.losses.precision).
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor, offset: int) -> torch.Tensor:
        dtype = compute_dtype(q, keys)
        b = q.shape[0]
        with autocast_off(q.device):
            k, t = keys.to(dtype), scale.to(dtype)
            lse = torch.empty(b, dtype=dtype, device=q.device)
            positives = torch.empty(b, dtype=dtype, device=q.device)
            for s in range(0, b, ROW_CHUNK):
                logits = (q[s : s + ROW_CHUNK].to(dtype) @ k.T).mul_(t)
                rows = torch.arange(logits.shape[0], device=q.device)
                positives[s : s + ROW_CHUNK] = logits[rows, rows + offset + s]
                lse[s : s + ROW_CHUNK] = torch.logsumexp(logits, dim=1)
                del logits
        ctx.save_for_backward(q, keys, scale, lse)
        ctx.offset = offset
        return (lse - positives).mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, keys, scale, lse = ctx.saved_tensors
        dtype = lse.dtype
        b = q.shape[0]
        with autocast_off(q.device):
            k, t, grad = keys.to(dtype), scale.to(dtype), grad.to(dtype)
            grad_q = torch.empty(q.shape, dtype=dtype, device=q.device)
            grad_keys = torch.zeros(keys.shape, dtype=dtype, device=q.device)
            grad_scale = torch.zeros((), dtype=dtype, device=q.device)
            for s in range(0, b, ROW_CHUNK):
                q_s = q[s : s + ROW_CHUNK].to(dtype)
                raw = q_s @ k.T  # unscaled: d loss / d scale = Σ dlogits · raw
                rows = torch.arange(raw.shape[0], device=q.device)
                probs = (raw * t).sub_(lse[s : s + ROW_CHUNK, None]).exp_()  # softmax, in place
                probs[rows, rows + ctx.offset + s] -= 1
                probs.mul_(grad / b)  # now d loss / d logits
                grad_scale += torch.vdot(probs.reshape(-1), raw.reshape(-1))
                del raw
                grad_q[s : s + ROW_CHUNK] = (probs @ k).mul_(t)
                grad_keys.addmm_(probs.T, q_s)
                del probs
            # Scaled once here rather than through addmm's alpha: alpha=float(scale) would copy the
            # scale to the host, a device sync per block and a graph break under torch.compile.
            grad_keys.mul_(t)
        return grad_q.to(q.dtype), grad_keys.to(keys.dtype), grad_scale.to(scale.dtype), None


def softmax_contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, *,
                             rank: int = 0, world_size: int = 1,
                             group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Mean of image→text and text→image cross-entropy for this worker's rows.

    Args:
        image, text: L2-normalised local features (B, D); row i of each is a positive pair.
        logit_scale: exponentiated temperature (scalar).
        rank, world_size, group: the process group whose workers hold the other rows.
    Returns:
        This worker's mean loss (fp32, or fp64 for fp64 features, also under autocast); the mean
        over workers equals the full-batch loss.
    """
    # Gathered in the compute dtype, so the backward's reduce-scatter also sums in it.
    dtype = compute_dtype(image, text)
    all_image = gather_with_grad(image.to(dtype), world_size, group)
    all_text = gather_with_grad(text.to(dtype), world_size, group)
    b = image.shape[0]
    # The scale goes in at its own precision (an fp32 parameter's exp): a bf16 copy of 99.48 is 99.5.
    i2t = _RowsCrossEntropy.apply(image, all_text, logit_scale, rank * b)  # B x N logits, one block at a time
    t2i = _RowsCrossEntropy.apply(text, all_image, logit_scale, rank * b)
    return (i2t + t2i) / 2


def naive_softmax_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The full N x N reference on one process (tests and benchmarks)."""
    logits = logit_scale * image @ text.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
