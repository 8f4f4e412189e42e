"""Modality gap (Liang et al. 2022): distance between the centroids of L2-normalised embeddings.

gap = || mean_i x_i/|x_i| - mean_j y_j/|y_j| ||_2, in [0, 2]. Reported beside it: the mean cosine
of matched pairs and of mismatched (shifted) pairs, which show whether the gap comes with alignment.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def modality_gap(image_emb: torch.Tensor, text_emb: torch.Tensor) -> dict[str, float]:
    """`image_emb[i]` and `text_emb[i]` are a pair; rows need not be normalised."""
    if image_emb.shape != text_emb.shape or image_emb.shape[0] == 0:
        raise ValueError(f"modality gap needs paired rows of one shape, got {tuple(image_emb.shape)} and "
                         f"{tuple(text_emb.shape)}")
    x = F.normalize(image_emb.float(), dim=-1)
    y = F.normalize(text_emb.float(), dim=-1)
    out = {"eval/modality_gap": float((x.mean(0) - y.mean(0)).norm()),
           "eval/matched_cos": float((x * y).sum(-1).mean())}
    if x.shape[0] > 1:
        out["eval/random_cos"] = float((x * y.roll(1, dims=0)).sum(-1).mean())
    return out
