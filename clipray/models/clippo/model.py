"""CLIPPO: a single ViT (shared patch embedding, positions, transformer) for both modalities.

Text arrives as pixels (alt-text rendered by the data plane's `render_text` op into a uint8
image like the photos), so there is no token embedding and no text transformer: the model is
about half a CLIP with the same ViT. Pooling is a MAP head (no class token), as in big_vision's
`one_tower.py`. `model.clippo.separate_patch_embed` / `separate_head` give the text images their
own patch embedding / MAP head + projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clipray.config.schema import ModelConfig
from clipray.models.common.pooling import MAPHead
from clipray.models.common.transformer import LayerNorm, Transformer
from clipray.models.registry import model_registry


class Head(nn.Module):
    """MAP pooling then a linear projection to the shared embedding space."""

    def __init__(self, width: int, heads: int, embed_dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.map = MAPHead(width, heads, mlp_ratio)
        self.proj = nn.Parameter(width**-0.5 * torch.randn(width, embed_dim))  # [in, out]

    def forward(self, tokens_BND: torch.Tensor) -> torch.Tensor:
        return self.map(tokens_BND) @ self.proj


class CLIPPO(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        v, c = config.vision, config.clippo
        self.config = config
        grid = v.image_size // v.patch_size
        self.conv1 = nn.Conv2d(3, v.width, kernel_size=v.patch_size, stride=v.patch_size, bias=False)
        self.text_conv1 = (nn.Conv2d(3, v.width, kernel_size=v.patch_size, stride=v.patch_size, bias=False)
                           if c.separate_patch_embed else None)
        self.positional_embedding = nn.Parameter(v.width**-0.5 * torch.randn(grid * grid, v.width))
        self.ln_pre = LayerNorm(v.width)
        self.transformer = Transformer(v.width, v.layers, v.heads, v.mlp_ratio, config.quick_gelu)
        self.ln_post = LayerNorm(v.width)
        heads = c.map_heads or v.heads
        self.head = Head(v.width, heads, config.embed_dim, v.mlp_ratio)
        self.text_head = Head(v.width, heads, config.embed_dim, v.mlp_ratio) if c.separate_head else None
        self.logit_scale = nn.Parameter(torch.tensor(math.log(config.init_logit_scale)))
        self.max_log_scale = math.log(config.max_logit_scale)

    def _encode(self, x: torch.Tensor, text: bool) -> torch.Tensor:
        conv = self.text_conv1 if text and self.text_conv1 is not None else self.conv1
        x = conv(x).flatten(2).transpose(1, 2) + self.positional_embedding.to(x.dtype)
        x = self.ln_post(self.transformer(self.ln_pre(x)))
        head = self.text_head if text and self.text_head is not None else self.head
        return head(x)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self._encode(images, text=False)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text_images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Rendered text as normalised float images (B, 3, S, S), like `encode_image`'s input."""
        x = self._encode(text_images, text=True)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor, text_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_image(images, True), self.encode_text(text_images, True), self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        self.logit_scale.clamp_(0, self.max_log_scale)

    def parameter_counts(self) -> dict[str, int]:
        """Per tower, counting the shared ViT in both; `total` counts every parameter once."""
        def n(*mods: nn.Module | None) -> int:
            return sum(p.numel() for m in mods if m is not None for p in m.parameters())

        trunk = n(self.transformer, self.ln_pre, self.ln_post) + self.positional_embedding.numel()
        vision = trunk + n(self.conv1, self.head)
        text = trunk + n(self.text_conv1 or self.conv1, self.text_head or self.head)
        return {"vision": vision, "text": text, "shared": trunk + (0 if self.text_conv1 else n(self.conv1))
                + (0 if self.text_head else n(self.head)), "total": n(self)}


@model_registry.register("clippo")
def build_clippo(config: ModelConfig) -> CLIPPO:
    return CLIPPO(config)
