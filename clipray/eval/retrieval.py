"""Image-text retrieval Recall@K from L2-normalised embeddings, computed in row chunks.

Relevance is given by group ids: image i and text t match when `image_groups[i] ==
text_groups[t]`. Paired data (one caption per image, COCO-style several) uses the image index
as the group; a labelled set whose captions repeat (the synthetic and digits eval splits, where
the caption is the class name) uses the caption, so text->image counts any image of that caption
as a hit and image->text the caption shared by its class. Scores S = F G^T are computed
`chunk` rows at a time so memory stays O(chunk x N), never N x N.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

KS = (1, 5, 10)


def _recall(queries: torch.Tensor, keys: torch.Tensor, q_groups: torch.Tensor, k_groups: torch.Tensor,
            ks: Sequence[int], chunk: int) -> dict[int, float]:
    hits = {k: 0 for k in ks}
    kmax = min(max(ks), keys.shape[0])
    for i in range(0, queries.shape[0], chunk):
        scores = queries[i : i + chunk] @ keys.T  # chunk, N_keys
        top = scores.topk(kmax, dim=1).indices  # chunk, kmax
        match = k_groups[top] == q_groups[i : i + chunk, None]  # chunk, kmax
        for k in ks:
            hits[k] += int(match[:, :k].any(dim=1).sum())
    return {k: hits[k] / queries.shape[0] for k in ks}


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, image_groups: Sequence[int] | np.ndarray,
                      text_groups: Sequence[int] | np.ndarray, ks: Sequence[int] = KS,
                      chunk: int = 4096) -> dict[str, float]:
    """`eval/i2t_r{K}` (image->text), `eval/t2i_r{K}` (text->image) and their sum `eval/rsum`."""
    if image_emb.shape[0] == 0 or text_emb.shape[0] == 0:
        raise ValueError("retrieval needs at least one image and one text")
    ig = torch.as_tensor(np.asarray(image_groups), device=image_emb.device)
    tg = torch.as_tensor(np.asarray(text_groups), device=text_emb.device)
    img, txt = image_emb.float(), text_emb.float()
    i2t = _recall(img, txt, ig, tg, ks, chunk)
    t2i = _recall(txt, img, tg, ig, ks, chunk)
    out = {f"eval/i2t_r{k}": v for k, v in i2t.items()}
    out.update({f"eval/t2i_r{k}": v for k, v in t2i.items()})
    out["eval/rsum"] = sum(i2t.values()) + sum(t2i.values())
    return out


def caption_groups(captions: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Unique captions (first-seen order) and, per row, the index of its caption among them."""
    index: dict[str, int] = {}
    groups = np.array([index.setdefault(c, len(index)) for c in captions], dtype=np.int64)
    return list(index), groups
