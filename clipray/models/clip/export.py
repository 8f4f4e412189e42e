"""What `clipray export` writes: a trained CLIP in OpenAI's key layout, as open_clip or OpenAI's
loaders read it (the command itself, which finds the model, is `clipray.export`).

Two formats:

- `open_clip`: a folder that open_clip (3.3.0) loads with `create_model('local-dir:DIR')`:
  `open_clip_config.json` holds `model_cfg` (the keyword arguments of open_clip's `CLIP`:
  embed_dim, quick_gelu, vision_cfg, text_cfg) and `preprocess_cfg` (image size and the
  pipeline's normalisation mean/std; open_clip's constructor refuses unknown keys, so these
  cannot sit in model_cfg), beside the weights in `open_clip_pytorch_model.bin`, one of the
  names open_clip's folder loader looks for.
- `openai`: one state-dict file, `model.pt`, as OpenAI's `clip.load` and open_clip's
  `load_openai_model` read it. Those loaders carry no config: they infer the architecture from
  tensor shapes and assume QuickGELU, 64-wide attention heads and an MLP 4x wide, so a model that
  differs is refused (with a pointer to the open_clip format).

Only what open_clip computes identically is written: CLIP with a causal text tower pooled at the
end-of-text token (ViT or ModifiedResNet image tower). CLIPPO and ALBEF have no open_clip
counterpart; a bidirectional or mean-pooled text tower would embed differently there (open_clip's
config has no mean pooling, and its tower without a causal mask attends to the padding, clipray's
masks it).
"""

from __future__ import annotations

from typing import Any

from clipray.config import PipelineConfig
from clipray.errors import InvalidInputError

FORMATS = ("open_clip", "openai")
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_pytorch_model.bin"
OPENAI_WEIGHTS = "model.pt"
OPENAI_HEAD_WIDTH = 64  # OpenAI's build_model (and open_clip's copy of it): heads = width // 64


class ExportError(InvalidInputError):
    """The model cannot be written in the asked format; the message says why and what to do."""


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")


def check_exportable(config: PipelineConfig, fmt: str) -> None:
    """Raise ExportError unless open_clip / OpenAI's loaders compute exactly what clipray does."""
    m = config.model
    check_format(fmt)
    if m.family != "clip":
        why = {"clippo": "one ViT shared by images and rendered text", "albef": "a fusion encoder with ITM/MLM heads"}
        raise ExportError(f"model.family={m.family} ({why.get(m.family, 'not a CLIP dual encoder')}) has no "
                          f"open_clip or OpenAI counterpart: only model.family=clip models can be exported")
    if m.text.attn != "causal" or m.text.pool != "eot":
        raise ExportError(f"model.text.attn={m.text.attn}, pool={m.text.pool}: open_clip's CLIP text tower "
                          f"embeds only a causal, end-of-text-pooled tower as clipray does (it has no mean pooling, "
                          f"and without a causal mask it attends to padding); export supports attn=causal with "
                          f"pool=eot")
    if fmt == "openai":
        v, t = m.vision, m.text
        vision_width = v.width * 32 if v.kind == "resnet" else v.width  # ResNet heads: attention-pool width
        problems = []
        if not m.quick_gelu:
            problems.append("model.quick_gelu is false (OpenAI's loader builds QuickGELU)")
        if v.heads != max(1, vision_width // OPENAI_HEAD_WIDTH) or t.heads != max(1, t.width // OPENAI_HEAD_WIDTH):
            problems.append(f"heads (vision {v.heads}, text {t.heads}) are not width // 64 "
                            f"({vision_width // OPENAI_HEAD_WIDTH}, {t.width // OPENAI_HEAD_WIDTH})")
        if v.mlp_ratio != 4.0 or t.mlp_ratio != 4.0:
            problems.append(f"mlp_ratio (vision {v.mlp_ratio}, text {t.mlp_ratio}) is not 4")
        if m.init_logit_bias is not None:
            problems.append("the model has a logit bias (SigLIP-style), which OpenAI's layout lacks")
        if problems:
            raise ExportError("--format openai carries no config, and OpenAI's loaders would rebuild a different "
                              "model: " + "; ".join(problems) + ". Use --format open_clip (its config says all)")


def open_clip_model_cfg(config: PipelineConfig) -> dict[str, Any]:
    """Keyword arguments of open_clip's `CLIP(...)` for this model (nothing else: it refuses unknown keys)."""
    m = config.model
    v, t = m.vision, m.text
    if v.kind == "resnet":
        # open_clip: ModifiedResNet heads = width * 32 // head_width.
        vision: dict[str, Any] = {"image_size": v.image_size, "layers": list(v.layers_per_stage), "width": v.width,
                                  "head_width": v.width * 32 // v.heads}
    else:
        vision = {"image_size": v.image_size, "layers": v.layers, "width": v.width, "patch_size": v.patch_size,
                  "head_width": v.width // v.heads, "mlp_ratio": v.mlp_ratio}
    text = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads,
            "layers": t.layers, "mlp_ratio": t.mlp_ratio,
            # clipray pools at the end-of-text token, the largest id of each row (as OpenAI's argmax).
            "pool_type": "argmax"}
    cfg: dict[str, Any] = {"embed_dim": m.embed_dim, "quick_gelu": m.quick_gelu, "vision_cfg": vision, "text_cfg": text}
    if m.init_logit_bias is not None:
        cfg["init_logit_bias"] = m.init_logit_bias  # creates the parameter; its trained value is in the weights
    return cfg


def open_clip_preprocess_cfg(config: PipelineConfig) -> dict[str, Any]:
    """open_clip's PreprocessCfg: clipray evaluates images resized (short side, bicubic) and centre-cropped."""
    return {"size": config.model.vision.image_size, "mode": "RGB", "mean": list(config.image.mean),
            "std": list(config.image.std), "interpolation": "bicubic", "resize_mode": "shortest"}
