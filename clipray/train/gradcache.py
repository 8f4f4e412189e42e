"""Gradient caching (GradCache): the exact gradient of a batch too large to backprop at once.

A contrastive loss couples every row with every other, so plain gradient accumulation over
micro-batches changes the loss (fewer negatives). Gradient caching keeps it exact:

1. embed every micro-batch without autograd (activations of one micro-batch at a time);
2. compute the loss over all cached embeddings as leaves and backprop to them (and to the
   loss's own parameters: temperature, bias), which caches d loss / d embedding;
3. re-embed micro-batch by micro-batch with autograd and backprop the cached embedding
   gradients through the towers (a surrogate  Σ ⟨emb_j, grad_j⟩).

Cost: two forwards and one backward per row. Parameter gradients are synchronised once, on the
last micro-batch (`no_sync` for the others). The towers must be deterministic between the two
forwards (CLIP has no dropout), or the RNG state must be replayed, and each row's embedding must
not depend on the other rows of its micro-batch: a BatchNorm tower (the ResNet image tower)
normalises by micro-batch statistics, so the loss and gradient would be those of other
statistics than the whole batch's. Pipelines combining the two are refused at load
(`PipelineConfig`: train.micro_batches > 1 with model.vision.kind=resnet).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

# encode(micro_batch) -> (image_emb, text_emb, anchor): `anchor` is a scalar that touches every
# parameter which the towers' outputs do not (temperature, bias) with zero weight, so DDP sees a
# gradient for every parameter on the synchronising backward.
Encode = Callable[[Any], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cached_backward(encode: Encode, micro_batches: Sequence[Any], loss_fn: LossFn,
                    no_sync: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
                    forward_context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
                    ) -> torch.Tensor:
    """Backprop `loss_fn` over the concatenated micro-batches; returns the (detached) loss."""
    with torch.no_grad(), forward_context():
        cached = [encode(m)[:2] for m in micro_batches]
    image = torch.cat([c[0] for c in cached]).float().requires_grad_(True)
    text = torch.cat([c[1] for c in cached]).float().requires_grad_(True)
    sizes = [c[0].shape[0] for c in cached]
    with no_sync():
        with forward_context():
            loss = loss_fn(image, text)
        loss.backward()
    image_grads, text_grads = image.grad.split(sizes), text.grad.split(sizes)  # type: ignore[union-attr]
    last = len(micro_batches) - 1
    for j, micro in enumerate(micro_batches):
        with no_sync() if j < last else contextlib.nullcontext():
            with forward_context():
                img_j, txt_j, anchor = encode(micro)
            surrogate = ((img_j.float() * image_grads[j]).sum() + (txt_j.float() * text_grads[j]).sum()
                         + 0.0 * anchor)
            surrogate.backward()
    return loss.detach()


def split_batch(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """`parts` equal micro-batches of every column (tensors and lists)."""
    n = len(next(iter(batch.values())))
    if n % parts:
        raise ValueError(f"a batch of {n} rows does not split into train.micro_batches={parts} equal parts")
    size = n // parts
    return [{k: v[i * size : (i + 1) * size] for k, v in batch.items()} for i in range(parts)]
