"""The softmax loss's row-chunked forward/backward equals plain autograd over the full matrix."""

import torch
import torch.nn.functional as F

from clipray.losses import contrastive, naive_softmax_loss, softmax_contrastive_loss


def test_row_chunks_equal_full_matrix(monkeypatch):
    monkeypatch.setattr(contrastive, "ROW_CHUNK", 3)  # 10 rows -> chunks of 3, 3, 3, 1
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(10, 8, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(10, 8, generator=g, dtype=torch.float64), dim=-1)
    scale = torch.tensor(7.5, dtype=torch.float64)
    a = [t.clone().requires_grad_(True) for t in (img, txt, scale)]
    b = [t.clone().requires_grad_(True) for t in (img, txt, scale)]
    got, ref = softmax_contrastive_loss(*a), naive_softmax_loss(*b)
    got.backward()
    ref.backward()
    assert torch.allclose(got, ref, atol=1e-12)
    for x, y in zip(a, b):
        assert torch.allclose(x.grad, y.grad, atol=1e-12)
