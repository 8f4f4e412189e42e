"""Text transformer with CLIP's layout: token + positional embedding, ln_final, projection.

The attention mask (causal or bidirectional) and the pooling (end-of-text token, first token,
mean over real tokens) are choices so that text-tower variants can be compared on the same data.

Padding is known from where each caption ends (`padding_mask`), never from a token id: the fill
value 0 is also a real token ("!" in OpenAI's vocabulary).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from clipray.models.common.transformer import LayerNorm, ResidualAttentionBlock, Transformer


def padding_mask(ids_BL: torch.Tensor) -> torch.Tensor:
    """(B, L) bool, True at the positions after each caption's end-of-text token.

    A caption ends at its first end-of-text token, found as the first maximum of the row: every
    clipray tokenizer gives EOT its largest id (the rule CLIP's EOT pooling relies on too), and
    `argmax` returns the first of equal maxima. A row without EOT keeps only its first position.
    """
    end_B1 = ids_BL.argmax(dim=-1, keepdim=True)
    return torch.arange(ids_BL.shape[1], device=ids_BL.device) > end_B1


class TextTransformer(nn.Module):
    """Token ids (B, L) int -> embeddings (B, output_dim). EOT is the largest id; the positions
    after it are padding, whatever their ids."""

    def __init__(self, context_length: int, vocab_size: int, width: int, layers: int, heads: int,
                 output_dim: int, mlp_ratio: float = 4.0, quick_gelu: bool = False,
                 attn: str = "causal", pool: str = "eot") -> None:
        super().__init__()
        self.context_length = context_length
        self.attn_kind = attn
        self.pool = pool
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads, mlp_ratio, quick_gelu)
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        self.init_parameters()

    def init_parameters(self) -> None:
        """CLIP's initialisation (std scaled by width and depth)."""
        width, layers = self.transformer.width, len(self.transformer.resblocks)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        attn_std, fc_std = width**-0.5, (2 * width) ** -0.5
        for module in self.transformer.resblocks:
            # ModuleList and Sequential items are typed as plain Modules.
            block = cast(ResidualAttentionBlock, module)
            fc, proj = cast(nn.Linear, block.mlp.c_fc), cast(nn.Linear, block.mlp.c_proj)
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(fc.weight, std=fc_std)
            nn.init.normal_(proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def forward(self, ids_BL: torch.Tensor) -> torch.Tensor:
        L = ids_BL.shape[1]
        x = self.token_embedding(ids_BL) + self.positional_embedding[:L]
        pad_BL = padding_mask(ids_BL) if self.attn_kind != "causal" or self.pool == "mean" else None
        if self.attn_kind == "causal":
            # Padding sits after EOT, so under a causal mask no real token ever attends to it.
            mask = torch.full((L, L), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
            x = self.transformer(x, attn_mask=mask)
        else:
            x = self.transformer(x, key_padding_mask=pad_BL)
        x = self.ln_final(x)
        if self.pool == "eot":
            pooled = x[torch.arange(x.shape[0], device=x.device), ids_BL.argmax(dim=-1)]
        elif self.pool == "first":
            pooled = x[:, 0]
        else:  # mean over the caption's tokens, SOT to EOT
            assert pad_BL is not None
            keep = (~pad_BL).unsqueeze(-1).to(x.dtype)
            pooled = (x * keep).sum(1) / keep.sum(1).clamp_min(1)
        return pooled @ self.text_projection
