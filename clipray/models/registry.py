"""Model families by name: `build_model(config.model)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

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
