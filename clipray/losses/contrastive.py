"""Sharded softmax contrastive loss (CLIP/InfoNCE).

Each worker scores its B local rows against the N = W·B all-gathered rows of the other
modality, so the logits are B x N per worker, never N x N. The gather is autograd-aware
(its backward is a reduce-scatter), so every worker's features receive the gradient of every
worker's loss terms. With DDP averaging parameter gradients over W workers, the result is
exactly the gradient of the full-batch loss  L = (1/2N) Σ_i [CE(img_i→txt) + CE(txt_i→img)].
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor, world_size: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate `x` (B, D) from all workers along dim 0, keeping gradients to every shard."""
    if world_size == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x, group=group if group is not None else dist.group.WORLD), dim=0)


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
    labels = torch.arange(b, device=image.device) + rank * b
    logits_i2t = logit_scale * image @ all_text.T  # B x N
    logits_t2i = logit_scale * text @ all_image.T
    return (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels)) / 2
