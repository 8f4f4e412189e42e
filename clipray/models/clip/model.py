"""CLIP dual encoder with OpenAI's parameter layout (`visual.*`, text modules at top level)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clipray.config.schema import ModelConfig
from clipray.models.common.resnet import ModifiedResNet
from clipray.models.common.text import TextTransformer
from clipray.models.common.vit import VisionTransformer
from clipray.models.registry import model_registry


class CLIP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        t = config.text
        self.config = config
        self.visual = build_image_tower(config)
        text = TextTransformer(t.context_length, t.vocab_size, t.width, t.layers, t.heads, config.embed_dim,
                               t.mlp_ratio, config.quick_gelu, attn=t.attn, pool=t.pool)
        # OpenAI keeps the text modules at the top level of the state dict.
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.transformer = text.transformer
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self._text = [text]  # not a submodule: its parameters are registered above
        self.logit_scale = nn.Parameter(torch.tensor(math.log(config.init_logit_scale)))
        self.max_log_scale = math.log(config.max_logit_scale)
        # SigLIP's learnable bias; absent for softmax models, so their state dict is OpenAI's.
        self.logit_bias = (nn.Parameter(torch.tensor(float(config.init_logit_bias)))
                           if config.init_logit_bias is not None else None)

    @property
    def text(self) -> TextTransformer:
        return self._text[0]

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.text(ids)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L2-normalised image and text embeddings and the exponentiated logit scale."""
        return self.encode_image(images, True), self.encode_text(ids, True), self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Called after every optimizer step: temperature no lower than 1/max_logit_scale."""
        self.logit_scale.clamp_(0, self.max_log_scale)

    def parameter_counts(self) -> dict[str, int]:
        vision = sum(p.numel() for p in self.visual.parameters())
        total = sum(p.numel() for p in self.parameters())
        scalars = 1 if self.logit_bias is None else 2
        return {"vision": vision, "text": total - vision - scalars, "total": total}

    def to_openai_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights in OpenAI's / open_clip's key layout (clipray's own layout is the same)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}


def build_image_tower(config: ModelConfig) -> nn.Module:
    v = config.vision
    if v.kind == "resnet":
        return ModifiedResNet(v.layers_per_stage, config.embed_dim, v.heads, v.image_size, v.width)
    return VisionTransformer(v.image_size, v.patch_size, v.width, v.layers, v.heads, config.embed_dim, v.mlp_ratio,
                             config.quick_gelu)


@model_registry.register("clip")
def build_clip(config: ModelConfig) -> CLIP:
    return CLIP(config)
