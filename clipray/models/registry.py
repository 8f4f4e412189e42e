"""Model families by name: `build_model(config.model)`; `build_trained_model` adds its weights."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from clipray.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from clipray.config.schema import ModelConfig

model_registry: Registry[Callable[[ModelConfig], nn.Module]] = Registry(
    "model family",
    lazy_modules=["clipray.models.clip.model", "clipray.models.clippo.model", "clipray.models.albef.model"],
)


def build_model(config: ModelConfig) -> nn.Module:
    return model_registry.get(config.family)(config)


def build_trained_model(config: ModelConfig, state_dict: Mapping[str, Any]) -> nn.Module:
    """`build_model(config)` with trained parameters, in eval mode; a mismatch is an error."""
    model = build_model(config)
    model.load_state_dict(state_dict)
    return model.eval()
