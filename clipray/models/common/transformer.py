"""Pre-LayerNorm transformer blocks with CLIP's parameter names.

Names follow OpenAI's layout (`ln_1`, `attn.in_proj_weight`, `attn.out_proj`, `mlp.c_fc`,
`mlp.c_proj`, `ln_2`) so released checkpoints load without renaming. Shapes: B batch,
L sequence length, D width.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
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


class Attention(nn.Module):
    """Multi-head self-attention on `F.scaled_dot_product_attention` (flash / memory-efficient kernels).

    Parameters are named like `nn.MultiheadAttention`'s (`in_proj_weight`, `in_proj_bias`, `out_proj`)
    so OpenAI state dicts load unchanged; unlike it, the fused kernels run in training too and the
    module traces cleanly under `torch.compile`.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's initialisation
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x_BLD: torch.Tensor, attn_mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, D = x_BLD.shape
        qkv = F.linear(x_BLD, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)  # B,H,L,d
        mask = attn_mask.to(q.dtype) if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
        if key_padding_mask is not None:  # True = padding, as in nn.MultiheadAttention
            pad = torch.zeros(B, 1, 1, L, device=q.device, dtype=q.dtype).masked_fill(
                key_padding_mask[:, None, None, :], float("-inf"))
            mask = pad if mask is None else mask + pad
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, D))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, quick_gelu: bool = False) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width)
        act: nn.Module = QuickGELU() if quick_gelu else nn.GELU()
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", act),
                                              ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x_BLD: torch.Tensor, attn_mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x_BLD)
        x_BLD = x_BLD + self.attn(h, attn_mask=attn_mask, key_padding_mask=key_padding_mask)
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
