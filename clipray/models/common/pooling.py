"""Multi-head attention pooling (MAP), as big_vision's `MAPHead`: a learned probe token attends
over all tokens, then LayerNorm + MLP with a residual. Shapes: B batch, N tokens, D width."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from clipray.models.common.transformer import LayerNorm


class MAPHead(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.probe = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x_BND: torch.Tensor) -> torch.Tensor:
        probe = self.probe.to(x_BND.dtype).expand(x_BND.shape[0], -1, -1)
        x = self.attn(probe, x_BND, x_BND, need_weights=False)[0]
        x = x + self.mlp(self.ln(x))
        return x[:, 0]
