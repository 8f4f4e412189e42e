"""Model FLOPs per sample, counted from the config (matmuls and convolutions, 2 FLOPs per MAC).

The count matches open_clip's `docs/model_profile.csv` (torch FlopCounterMode): ViT-B/32 image
tower 8.82 GFLOP, ViT-B/16 35.13, 12 x 512 text tower at 77 tokens 5.96. Attention counts the
full L x L scores (causal masking is not subtracted), layer norms, softmax and the loss are left
out. A training step costs 3x the forward pass (backward = 2x forward).
"""

from __future__ import annotations

from clipray.config.schema import ModelConfig


def transformer_macs(tokens: int, width: int, layers: int, mlp_ratio: float) -> int:
    hidden = int(width * mlp_ratio)
    per_layer = tokens * (4 * width * width + 2 * width * hidden) + 2 * tokens * tokens * width
    return layers * per_layer


def image_forward_flops(config: ModelConfig) -> int:
    v = config.vision
    grid = (v.image_size // v.patch_size) ** 2
    patch = grid * 3 * v.patch_size * v.patch_size * v.width
    body = transformer_macs(grid + 1, v.width, v.layers, v.mlp_ratio)
    return 2 * (patch + body + v.width * config.embed_dim)


def text_forward_flops(config: ModelConfig) -> int:
    t = config.text
    body = transformer_macs(t.context_length, t.width, t.layers, t.mlp_ratio)
    return 2 * (body + t.width * config.embed_dim)


def train_flops_per_sample(config: ModelConfig) -> int:
    """3 x (image + text forward): the MFU convention of performance.md section 1.4."""
    return 3 * (image_forward_flops(config) + text_forward_flops(config))
