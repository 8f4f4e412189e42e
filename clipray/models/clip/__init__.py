"""CLIP: a vision tower and a causal text tower trained with a contrastive loss."""

from clipray.models.clip.model import CLIP, build_clip

__all__ = ["CLIP", "build_clip"]
