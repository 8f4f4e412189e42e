"""Objectives: `objective(batch) -> (losses, report)`, one per model family.

An objective owns its model(s) and anything stateful about the loss (momentum copies, queues),
and their state_dict. The training loop is the same for every family.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from clipray.config import PipelineConfig
from clipray.losses import sigmoid_contrastive_loss, softmax_contrastive_loss
from clipray.models import build_model
from clipray.models.common.image import text_tower_input, to_model_input
from clipray.registry import Registry
from clipray.text.encoding import text_encoding
from clipray.train.gradcache import cached_backward, split_batch
from clipray.train.parallel import Parallel, apply_memory_switches

# Scalars shown beside the losses. Tensors stay on the device: the loop reads them only on logging
# steps, so an ordinary step never waits for the GPU to copy a number to the host.
Report = dict[str, float | torch.Tensor]

objective_registry: Registry[Callable[..., Objective]] = Registry(
    "objective", lazy_modules=["clipray.train.albef_objective"]
)


class Objective:
    """Base: holds `model` (DDP- or FSDP-wrapped when world_size > 1) and the distributed context."""

    def __init__(self, model: nn.Module, *, rank: int, world_size: int, device: torch.device,
                 parallel: str = "ddp") -> None:
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.module = model.to(device)
        self.parallel = Parallel(self.module, strategy=parallel, world_size=world_size, device=device)
        self.model: nn.Module = self.parallel.model

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Report]:
        raise NotImplementedError

    def forward_backward(self, batch: dict[str, torch.Tensor],
                         autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
                         ) -> tuple[dict[str, torch.Tensor], Report]:
        """Losses of one step with their gradients accumulated into the parameters."""
        with autocast():
            losses, report = self(batch)
        losses["loss"].backward()
        self.parallel.sync_replicated_grads()
        return losses, report

    def parameters(self) -> list[nn.Parameter]:
        return list(self.module.parameters())

    def after_step(self) -> None:
        """Called after every optimizer step."""

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def state_dict(self) -> dict[str, Any]:
        """Collective under FSDP: every rank calls it."""
        return {"model": self.parallel.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.parallel.load_state_dict(state["model"])

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return self.parallel.optimizer_state_dict(optimizer)

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        self.parallel.load_optimizer_state_dict(optimizer, state)


class ContrastiveObjective(Objective):
    """CLIP-style: normalised image/text embeddings, sharded softmax or ring sigmoid loss.

    With train.micro_batches > 1 the step uses gradient caching (`clipray.train.gradcache`): the
    loss is that of the whole local batch, its gradient exact, its activation memory that of
    one micro-batch.
    """

    def __init__(self, config: PipelineConfig, *, rank: int, world_size: int, device: torch.device) -> None:
        tc = config.train
        model = build_initial_model(config)
        if tc.loss == "sigmoid" and getattr(model, "logit_bias", None) is None:
            raise ValueError("train.loss=sigmoid needs a learnable bias: set model.init_logit_bias (SigLIP uses -10 "
                             "with model.init_logit_scale 10)")
        apply_memory_switches(model, grad_checkpointing=tc.grad_checkpointing, compile=tc.compile)
        super().__init__(model, rank=rank, world_size=world_size, device=device, parallel=tc.parallel)
        self.mean, self.std = config.image.mean, config.image.std
        self.loss_kind = tc.loss
        self.micro_batches = tc.micro_batches
        self.text_encoding = text_encoding(config)  # which column holds the captions: ids, or CLIPPO's rendering

    # nn.Module types its attributes as Tensor | Module: these two are the model's Parameters.
    @property
    def logit_scale(self) -> torch.Tensor:
        return cast(torch.Tensor, self.module.logit_scale)

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """SigLIP's learnable bias; None for a model without one (train.loss=sigmoid needs it: __init__)."""
        return cast("torch.Tensor | None", getattr(self.module, "logit_bias", None))

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        images = to_model_input(batch["image"].to(self.device, non_blocking=True), self.mean, self.std)
        column = batch[self.text_encoding.column].to(self.device, non_blocking=True)
        return images, text_tower_input(self.text_encoding, column, self.mean, self.std)

    def loss(self, image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if self.loss_kind == "sigmoid":
            bias = self.logit_bias
            assert bias is not None  # checked in __init__
            return sigmoid_contrastive_loss(image_emb, text_emb, scale, bias, rank=self.rank,
                                            world_size=self.world_size)
        return softmax_contrastive_loss(image_emb, text_emb, scale, rank=self.rank, world_size=self.world_size)

    def _report(self, scale: torch.Tensor) -> Report:
        out: Report = {"logit_scale": scale.detach()}
        if self.loss_kind == "sigmoid":
            bias = self.logit_bias
            assert bias is not None  # checked in __init__
            out["logit_bias"] = bias.detach().clone()  # the optimizer updates it in place
        return out

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Report]:
        image_emb, text_emb, scale = self.model(*self._inputs(batch))
        return {"loss": self.loss(image_emb, text_emb, scale)}, self._report(scale)

    def forward_backward(self, batch: dict[str, torch.Tensor],
                         autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
                         ) -> tuple[dict[str, torch.Tensor], Report]:
        if self.micro_batches == 1:
            return super().forward_backward(batch, autocast)
        scale = self.logit_scale.exp()
        extra = [p for p in (self.logit_scale, self.logit_bias) if p is not None]

        def encode(micro: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            image_emb, text_emb, _ = self.model(*self._inputs(micro))
            # sum() is typed Tensor | int (0 for no terms); `extra` always holds logit_scale.
            return image_emb, text_emb, sum(p.sum() for p in extra)  # type: ignore[return-value]

        loss = cached_backward(encode, split_batch(batch, self.micro_batches),
                               lambda img, txt: self.loss(img, txt, scale),
                               no_sync=self.parallel.no_sync, forward_context=autocast)
        self.parallel.sync_replicated_grads()
        return {"loss": loss}, self._report(scale)

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
