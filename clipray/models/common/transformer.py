"""Pre-LayerNorm transformer blocks with CLIP's parameter names.

Names follow OpenAI's layout (`ln_1`, `attn.in_proj_weight`, `attn.out_proj`, `mlp.c_fc`,
`mlp.c_proj`, `ln_2`) so released checkpoints load without renaming. Shapes: B batch,
L sequence length, D width.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (stable under bf16 autocast), cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig = x.dtype
        return super().forward(x.float()).to(orig)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, quick_gelu: bool = False) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = LayerNorm(width)
        act: nn.Module = QuickGELU() if quick_gelu else nn.GELU()
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", act),
                                              ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x_BLD: torch.Tensor, attn_mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x_BLD)
        x_BLD = x_BLD + self.attn(h, h, h, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                  need_weights=False)[0]
        return x_BLD + self.mlp(self.ln_2(x_BLD))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0,
                 quick_gelu: bool = False) -> None:
        super().__init__()
        self.width = width
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio, quick_gelu) for _ in range(layers)]
        )
        self.grad_checkpointing = False

    def forward(self, x_BLD: torch.Tensor, attn_mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and self.training:
                x_BLD = checkpoint(block, x_BLD, attn_mask, key_padding_mask, use_reentrant=False)
            else:
                x_BLD = block(x_BLD, attn_mask, key_padding_mask)
        return x_BLD
