"""OpenAI / open_clip checkpoints: infer the architecture from tensor shapes, load, write back.

clipray's CLIP uses OpenAI's key layout, so loading is shape inference plus dropping the
TorchScript extras; `CLIP.to_openai_state_dict()` writes the same keys back. Inference follows
OpenAI's `build_model` (and open_clip's `build_model_from_openai_state_dict`): a `visual.proj`
key means a ViT tower, otherwise a ModifiedResNet; heads = width // 64 unless given.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clipray.config.schema import ModelConfig, TextTowerConfig, VisionConfig
from clipray.data.sources import read_bytes
from clipray.errors import InvalidInputError

JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def _count_blocks(state_dict: Mapping[str, Any], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


def infer_config(state_dict: Mapping[str, torch.Tensor], *, quick_gelu: bool = True,
                 vision_heads: int | None = None, text_heads: int | None = None) -> ModelConfig:
    """The ModelConfig whose CLIP has exactly these tensors (OpenAI key layout)."""
    sd = state_dict
    missing = [k for k in ("text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight")
               if k not in sd]
    if missing:
        raise InvalidInputError(f"not an OpenAI/open_clip CLIP state dict: missing {', '.join(missing)}")
    if "visual.proj" in sd:
        width, _, patch, _ = sd["visual.conv1.weight"].shape
        grid = round(math.sqrt(sd["visual.positional_embedding"].shape[0] - 1))
        vision = VisionConfig(kind="vit", image_size=patch * grid, patch_size=patch, width=width,
                              layers=_count_blocks(sd, "visual.transformer.resblocks."),
                              heads=vision_heads or max(1, width // 64),
                              mlp_ratio=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width)
    elif "visual.attnpool.positional_embedding" in sd:
        stages = tuple(_count_blocks(sd, f"visual.layer{i}.") for i in range(1, 5))
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        grid = round(math.sqrt(sd["visual.attnpool.positional_embedding"].shape[0] - 1))
        vision = VisionConfig(kind="resnet", image_size=grid * 32, width=width, layers_per_stage=stages,
                              heads=vision_heads or max(1, width * 32 // 64))
    else:
        raise InvalidInputError("cannot tell the image tower: neither visual.proj (ViT) nor visual.attnpool.* (ResNet)")
    text_width = sd["ln_final.weight"].shape[0]
    text = TextTowerConfig(context_length=sd["positional_embedding"].shape[0],
                           vocab_size=sd["token_embedding.weight"].shape[0], width=text_width,
                           layers=_count_blocks(sd, "transformer.resblocks."),
                           heads=text_heads or max(1, text_width // 64),
                           mlp_ratio=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width)
    return ModelConfig(family="clip", embed_dim=sd["text_projection"].shape[1], quick_gelu=quick_gelu,
                       vision=vision, text=text)


def clean_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Drop TorchScript extras and a DDP `module.` prefix; a 1-element logit_scale becomes 0-D."""
    out = {}
    for k, v in state_dict.items():
        k = k.removeprefix("module.")
        if k in JIT_EXTRAS:
            continue
        out[k] = v
    if "logit_scale" in out and out["logit_scale"].ndim:
        out["logit_scale"] = out["logit_scale"].reshape(())
    return out


def from_openai_state_dict(state_dict: Mapping[str, Any], *, quick_gelu: bool = True,
                           vision_heads: int | None = None, text_heads: int | None = None) -> Any:
    """A clipray CLIP with the architecture the tensors imply, holding these weights (float32).

    OpenAI's released weights were trained with QuickGELU (the default here); most open_clip
    LAION weights without the `-quickgelu` tag need quick_gelu=False.
    """
    from clipray.models.clip.model import CLIP

    sd = clean_state_dict(state_dict)
    config = infer_config(sd, quick_gelu=quick_gelu, vision_heads=vision_heads, text_heads=text_heads)
    model = CLIP(config)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    return model.eval()


def read_state_dict(path_or_uri: str) -> dict[str, Any]:
    """A state dict from a local path or a pyarrow-readable URI (s3://…): torch.save or TorchScript.

    A clipray checkpoint (its directory, or its `state.pt`) yields its model weights, read by the
    checkpoint format's own reader.
    """
    from clipray.models.checkpoint import STATE_FILE, has_state, read_state

    name = path_or_uri.rstrip("/")
    if name.endswith("/" + STATE_FILE) or name == STATE_FILE:
        return clean_state_dict(read_state(name[: -len(STATE_FILE)] or ".")["objective"]["model"])
    if "://" not in name and Path(name).is_dir() and has_state(name):
        return clean_state_dict(read_state(name)["objective"]["model"])
    data = read_bytes(path_or_uri)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception:  # OpenAI's released files are TorchScript archives
        obj = torch.jit.load(io.BytesIO(data), map_location="cpu").state_dict()
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise InvalidInputError(f"model.init_from {path_or_uri}: expected a state dict, got {type(obj).__name__}")
    return clean_state_dict(obj)


def load_init(model: torch.nn.Module, path_or_uri: str) -> None:
    """Load `model.init_from` into a freshly built model; mismatching keys or shapes name the file."""
    sd = read_state_dict(path_or_uri)
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in sd.items() if k in own and v.shape != own[k].shape]
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if bad or missing or unexpected:
        raise InvalidInputError(f"model.init_from {path_or_uri} does not fit model.* : shape mismatches {bad[:5]}, "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()})
