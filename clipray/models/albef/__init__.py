"""ALBEF: align before fuse (ViT + text encoder + cross-attention fusion encoder)."""

from clipray.models.albef.model import ALBEF, build_albef

__all__ = ["ALBEF", "build_albef"]
