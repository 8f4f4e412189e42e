"""ALBEF (Li et al., 2021): align image and text features, then fuse them with cross-attention.

    image  -> ViT tokens (B, 1+N, Dv) --------------------------+ cross-attention keys/values
    tokens -> text encoder (model.text.layers, bidirectional) --> fusion encoder (albef.fusion_layers:
              self-attn, cross-attn to the image tokens, MLP) -> ITM head on the first token, MLM head

Contrastive features are normalised projections of the first token ([CLS] = SOT here) of each
encoder. The model is architecture only; the losses, momentum model and queues live in
`clipray.train.albef_objective`. Token ids: the positions after each caption's end-of-text token
are padding (`padding_mask`; never an id: 0 is "!" in OpenAI's vocabulary). A masked caption has
no reliable EOT (a mask or random id may replace it), so its padding is that of the unmasked
caption, passed in. The MLM mask token is one extra id after the text tower's vocabulary
(`mask_id = model.text.vocab_size`), so the embedding and the MLM head have vocab_size + 1 rows;
pipelines are refused before training when the tokenizer's ids do not fit below it
(`clipray.text.tokenizer.check_vocabulary_fits`), so the mask id is never a real token.
Shapes: B batch, L text length, N image tokens, D width.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from clipray.config.schema import ModelConfig
from clipray.models.common.text import padding_mask
from clipray.models.common.transformer import LayerNorm, QuickGELU, Transformer
from clipray.models.common.vit import VisionTransformer
from clipray.models.registry import model_registry


class FusionBlock(nn.Module):
    """Pre-LN block: self-attention over text, cross-attention to image tokens, MLP."""

    def __init__(self, width: int, heads: int, image_width: int, mlp_ratio: float, quick_gelu: bool) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_cross = LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, kdim=image_width, vdim=image_width, batch_first=True)
        self.ln_2 = LayerNorm(width)
        act: nn.Module = QuickGELU() if quick_gelu else nn.GELU()
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", act),
                                              ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x_BLD: torch.Tensor, pad_BL: torch.Tensor, image_BND: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x_BLD)
        x_BLD = x_BLD + self.attn(h, h, h, key_padding_mask=pad_BL, need_weights=False)[0]
        h = self.ln_cross(x_BLD)
        x_BLD = x_BLD + self.cross_attn(h, image_BND, image_BND, need_weights=False)[0]
        return x_BLD + self.mlp(self.ln_2(x_BLD))


class ALBEF(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        v, t, a = config.vision, config.text, config.albef
        self.config = config
        self.mask_id = t.vocab_size
        self.visual = VisionTransformer(v.image_size, v.patch_size, v.width, v.layers, v.heads, config.embed_dim,
                                        v.mlp_ratio, config.quick_gelu)
        del self.visual.proj  # ALBEF projects the class token with vision_proj (a Linear with bias)
        self.vision_proj = nn.Linear(v.width, config.embed_dim)
        self.token_embedding = nn.Embedding(t.vocab_size + 1, t.width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(t.context_length, t.width))
        self.transformer = Transformer(t.width, t.layers, t.heads, t.mlp_ratio, config.quick_gelu)
        self.ln_text = LayerNorm(t.width)
        self.text_proj = nn.Linear(t.width, config.embed_dim)
        self.fusion = nn.ModuleList([FusionBlock(t.width, t.heads, v.width, t.mlp_ratio, config.quick_gelu)
                                     for _ in range(a.fusion_layers)])
        self.ln_fusion = LayerNorm(t.width)
        self.itm_head = nn.Linear(t.width, 2)
        self.mlm_transform = nn.Sequential(nn.Linear(t.width, t.width), nn.GELU(), LayerNorm(t.width))
        self.mlm_bias = nn.Parameter(torch.zeros(t.vocab_size + 1))  # decoder weights tied to token_embedding
        self.temp = nn.Parameter(torch.tensor(a.temp))
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    # -- encoders ---------------------------------------------------------------------------
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> all ViT output tokens (B, 1+N, Dv), class token first."""
        return self.visual.tokens(images)

    def image_feat(self, image_tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(image_tokens[:, 0]), dim=-1)

    def text_hidden(self, ids_BL: torch.Tensor, pad_BL: torch.Tensor | None = None) -> torch.Tensor:
        """Text-encoder states (B, L, D) of a bidirectional transformer that ignores padding.

        `pad_BL`: True at padding; by default `padding_mask(ids_BL)`. Masked captions pass the
        padding of their unmasked ids."""
        L = ids_BL.shape[1]
        x = self.token_embedding(ids_BL) + self.positional_embedding[:L]
        return self.transformer(x, key_padding_mask=padding_mask(ids_BL) if pad_BL is None else pad_BL)

    def text_feat(self, hidden_BLD: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(self.ln_text(hidden_BLD)[:, 0]), dim=-1)

    def fuse(self, hidden_BLD: torch.Tensor, pad_BL: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Fusion-encoder states (B, L, D); `pad_BL` (True = padding) is that of `hidden_BLD`."""
        x = hidden_BLD
        for block in self.fusion:
            x = block(x, pad_BL, image_tokens)
        return self.ln_fusion(x)

    # -- heads ------------------------------------------------------------------------------
    def itm_logits(self, fused_BLD: torch.Tensor) -> torch.Tensor:
        return self.itm_head(fused_BLD[:, 0])

    def mlm_logits(self, fused_BLD: torch.Tensor) -> torch.Tensor:
        return self.mlm_transform(fused_BLD) @ self.token_embedding.weight.T + self.mlm_bias

    # -- the contrastive interface shared with CLIP (zero-shot evaluation) ------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.image_feat(self.image_tokens(images))

    def encode_text(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.text_feat(self.text_hidden(ids))

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(ids), 1.0 / self.temp

    @torch.no_grad()
    def clamp_temp(self) -> None:
        self.temp.clamp_(0.001, 0.5)

    def parameter_counts(self) -> dict[str, int]:
        def n(*mods: nn.Module) -> int:
            return sum(p.numel() for m in mods for p in m.parameters())

        vision = n(self.visual, self.vision_proj)
        text = n(self.token_embedding, self.transformer, self.ln_text, self.text_proj) + self.positional_embedding.numel()
        fusion = n(self.fusion, self.ln_fusion, self.itm_head, self.mlm_transform) + self.mlm_bias.numel()
        return {"vision": vision, "text": text, "fusion": fusion, "total": n(self)}


@model_registry.register("albef")
def build_albef(config: ModelConfig) -> ALBEF:
    return ALBEF(config)
