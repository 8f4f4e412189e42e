"""Model families (CLIP, CLIPPO, ALBEF). Importable without Ray."""

from clipray.models.registry import build_model, build_trained_model, model_registry

__all__ = ["build_model", "build_trained_model", "model_registry"]
