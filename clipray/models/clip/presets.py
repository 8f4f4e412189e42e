"""Published CLIP sizes (OpenAI / open_clip model configs) and a CPU-sized one, as ModelConfigs."""

from __future__ import annotations

from clipray.config.schema import ModelConfig, TextTowerConfig, VisionConfig
from clipray.errors import UnknownNameError

_TEXT_512 = {"context_length": 77, "vocab_size": 49408, "width": 512, "layers": 12, "heads": 8}

PRESETS: dict[str, dict] = {
    "tiny": {"embed_dim": 32, "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
             "text": {"context_length": 16, "width": 32, "layers": 1, "heads": 2}},
    "rn-tiny": {"embed_dim": 32, "vision": {"kind": "resnet", "image_size": 32, "width": 8,
                                            "layers_per_stage": (1, 1, 1, 1), "heads": 2},
                "text": {"context_length": 16, "width": 32, "layers": 1, "heads": 2}},
    "vit-b32": {"embed_dim": 512, "vision": {"image_size": 224, "patch_size": 32, "width": 768, "layers": 12,
                                             "heads": 12}, "text": _TEXT_512},
    "vit-b16": {"embed_dim": 512, "vision": {"image_size": 224, "patch_size": 16, "width": 768, "layers": 12,
                                             "heads": 12}, "text": _TEXT_512},
    "vit-l14": {"embed_dim": 768, "vision": {"image_size": 224, "patch_size": 14, "width": 1024, "layers": 24,
                                             "heads": 16},
                "text": {**_TEXT_512, "width": 768, "heads": 12}},
    "rn50": {"embed_dim": 1024, "vision": {"kind": "resnet", "image_size": 224, "width": 64,
                                           "layers_per_stage": (3, 4, 6, 3), "heads": 32}, "text": _TEXT_512},
}


def preset(name: str, **overrides: object) -> ModelConfig:
    """ModelConfig of a named size; `overrides` set top-level ModelConfig fields (e.g. quick_gelu)."""
    if name not in PRESETS:
        raise UnknownNameError(f"unknown CLIP preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    p = PRESETS[name]
    fields: dict[str, object] = {"embed_dim": p["embed_dim"], "vision": VisionConfig(**p["vision"]),
                                 "text": TextTowerConfig(**p["text"]), **overrides}
    return ModelConfig(**fields)  # type: ignore[arg-type]
