"""Objectives: `objective(batch) -> (losses, report)`, one per model family.

An objective owns its model(s) and anything stateful about the loss (momentum copies, queues),
and their state_dict. The training loop is the same for every family.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from clipray.config import PipelineConfig
from clipray.losses import softmax_contrastive_loss
from clipray.models import build_model
from clipray.models.common.image import to_model_input
from clipray.registry import Registry

objective_registry: Registry[Callable[..., Objective]] = Registry(
    "objective", lazy_modules=["clipray.train.albef_objective"]
)


class Objective:
    """Base: holds `model` (DDP-wrapped when world_size > 1) and the distributed context."""

    def __init__(self, model: nn.Module, *, rank: int, world_size: int, device: torch.device) -> None:
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.module = model.to(device)
        self.model: nn.Module = self.module
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device] if device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=ids)

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        return list(self.module.parameters())

    def after_step(self) -> None:
        """Called after every optimizer step."""

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])


class ContrastiveObjective(Objective):
    """CLIP-style: normalised image/text embeddings, sharded softmax contrastive loss."""

    def __init__(self, config: PipelineConfig, *, rank: int, world_size: int, device: torch.device) -> None:
        super().__init__(build_initial_model(config), rank=rank, world_size=world_size, device=device)
        self.mean, self.std = config.image.mean, config.image.std
        self.text_pixels = config.text.kind == "pixels"  # CLIPPO: rendered alt-text in batch["text_image"]

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        images = to_model_input(batch["image"].to(self.device, non_blocking=True), self.mean, self.std)
        if self.text_pixels:
            text = to_model_input(batch["text_image"].to(self.device, non_blocking=True), self.mean, self.std)
        else:
            text = batch["tokens"].to(self.device, non_blocking=True).long()
        image_emb, text_emb, scale = self.model(images, text)
        loss = softmax_contrastive_loss(image_emb, text_emb, scale, rank=self.rank, world_size=self.world_size)
        return {"loss": loss}, {"logit_scale": float(scale.detach())}

    def after_step(self) -> None:
        self.module.clamp_logit_scale()  # type: ignore[operator]


def build_initial_model(config: PipelineConfig) -> nn.Module:
    """The family's model, with `model.init_from` loaded when set (same weights on every rank)."""
    model = build_model(config.model)
    if config.model.init_from:
        from clipray.models.clip.state_dict_adapter import load_init

        load_init(model, config.model.init_from)
    return model


@objective_registry.register("clip")
@objective_registry.register("clippo")
def _clip(config: PipelineConfig, **kw: Any) -> Objective:
    return ContrastiveObjective(config, **kw)


def build_objective(config: PipelineConfig, *, rank: int, world_size: int, device: torch.device) -> Objective:
    return objective_registry.get(config.model.family)(config, rank=rank, world_size=world_size, device=device)
