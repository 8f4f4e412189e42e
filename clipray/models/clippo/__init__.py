"""CLIPPO: one ViT encodes images and rendered alt-text (Tschannen et al., 2023)."""

from clipray.models.clippo.model import CLIPPO, build_clippo

__all__ = ["CLIPPO", "build_clippo"]
