"""Vision transformer with CLIP's details: class token, ln_pre, ln_post + projection."""

from __future__ import annotations

import torch
from torch import nn

from clipray.models.common.transformer import LayerNorm, Transformer


class VisionTransformer(nn.Module):
    """Images (B, 3, H, W) float -> embeddings (B, output_dim), pooled at the class token."""

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int, mlp_ratio: float = 4.0, quick_gelu: bool = False) -> None:
        super().__init__()
        self.image_size = image_size
        self.patch_size = patch_size
        grid = image_size // patch_size
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))  # [in, out], used as x @ proj

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All output tokens (B, 1 + grid², width) after ln_post; used by fusion models."""
        x = self.conv1(x).flatten(2).transpose(1, 2)  # B, N, D
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x)[:, 0] @ self.proj
