"""ALBEF's objective: ITC with momentum queues + ITM with hard negatives + MLM, distilled from
an EMA copy of the model. Losses are reported separately (`itc_loss`, `itm_loss`, `mlm_loss`).

The online forward (everything that needs gradients) is one `AlbefStep.forward`, so DDP wraps
it like any model. The momentum model and the two feature queues live here and in
`state_dict()`, hence in checkpoints. Per step, on each worker:

1. no grad: momentum features of this worker's batch, and momentum MLM logits (for distillation);
2. keys = [this batch's momentum features; queue]; online ITC against them with soft targets;
3. ITM: one hard negative image per text and one text per image, sampled from this worker's
   in-batch similarities; the fusion encoder scores B positives + 2B negatives;
4. MLM on masked tokens through text + fusion encoders;
5. after the optimizer step: EMA update, then the all-gathered momentum features are enqueued.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from clipray.config import PipelineConfig
from clipray.losses.albef import (
    FeatureQueue,
    distilled_mlm,
    mask_tokens,
    sample_hard_negatives,
    soft_target_itc,
)
from clipray.models.albef.model import ALBEF
from clipray.models.common.image import to_model_input
from clipray.models.common.text import padding_mask
from clipray.text.encoding import text_encoding
from clipray.train.objectives import Objective, Report, build_initial_model, objective_registry
from clipray.train.parallel import Parallel


class AlbefStep(nn.Module):
    """The online part of one training step: returns the three losses."""

    def __init__(self, model: ALBEF) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, ids: torch.Tensor, pad: torch.Tensor, masked_ids: torch.Tensor,
                mlm_labels: torch.Tensor,
                image_keys: torch.Tensor, text_keys: torch.Tensor, sim_i2t_m: torch.Tensor, sim_t2i_m: torch.Tensor,
                mlm_logits_m: torch.Tensor | None, alpha: float) -> dict[str, torch.Tensor]:
        m = self.model
        b = images.shape[0]
        image_tokens = m.image_tokens(images)
        image_feat = m.image_feat(image_tokens)
        hidden = m.text_hidden(ids, pad)
        text_feat = m.text_feat(hidden)

        sim_i2t = image_feat @ text_keys.T / m.temp
        sim_t2i = text_feat @ image_keys.T / m.temp
        itc = soft_target_itc(sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m, alpha)

        neg_image, neg_text = sample_hard_negatives(sim_i2t[:, :b], sim_t2i[:, :b])
        fused = m.fuse(torch.cat([hidden, hidden, hidden[neg_text]]),
                       torch.cat([pad, pad, pad[neg_text]]),
                       torch.cat([image_tokens, image_tokens[neg_image], image_tokens]))
        itm_labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(images.device)
        itm = F.cross_entropy(m.itm_logits(fused).float(), itm_labels)

        sel = mlm_labels != -100  # score only the masked positions (M of B x L)
        mlm_logits = m.mlm_logits(m.fuse(m.text_hidden(masked_ids, pad), pad, image_tokens)[sel])
        mlm = distilled_mlm(mlm_logits, mlm_labels[sel], mlm_logits_m, alpha)
        return {"loss": itc + itm + mlm, "itc_loss": itc, "itm_loss": itm, "mlm_loss": mlm}


class AlbefObjective(Objective):
    def __init__(self, config: PipelineConfig, *, rank: int, world_size: int, device: torch.device) -> None:
        model = build_initial_model(config)
        assert isinstance(model, ALBEF)
        self.rank, self.world_size, self.device = rank, world_size, device
        self.config = config
        self.cfg = config.model.albef
        self.mean, self.std = config.image.mean, config.image.std
        self.module: ALBEF = model.to(device)
        self.step_module = AlbefStep(self.module)
        if config.train.parallel != "ddp" or config.train.micro_batches != 1:
            raise ValueError("ALBEF trains with train.parallel=ddp and train.micro_batches=1 (its momentum "
                             "queues and hard negatives are per step)")
        # DDP wraps the whole step (online towers + fusion passes) so every loss syncs once.
        self.parallel = Parallel(self.step_module, strategy="ddp", world_size=world_size, device=device)
        self.model = self.parallel.model
        self.momentum = copy.deepcopy(self.module).requires_grad_(False).eval()
        dim = config.model.embed_dim
        self.image_queue = FeatureQueue(self.cfg.queue_size, dim, device)
        self.text_queue = FeatureQueue(self.cfg.queue_size, dim, device)
        self.steps = 0
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        # The special ids are the tokenizer's own (a trained vocabulary puts them far below
        # model.text.vocab_size): SOT acts as [CLS]; neither SOT nor EOT is masked, and random
        # replacements are drawn from the ids below them (every tokenizer puts its specials last).
        encoding = text_encoding(config)
        tokenizer = encoding.load_tokenizer()
        encoding.check_vocabulary(tokenizer)
        self.sot_id, self.eot_id = tokenizer.sot_id, tokenizer.eot_id
        self.regular_ids = min(self.sot_id, self.eot_id)

    def alpha(self) -> float:
        if self.cfg.alpha_warmup_steps <= 0:
            return self.cfg.alpha
        return self.cfg.alpha * min(1.0, self.steps / self.cfg.alpha_warmup_steps)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
        self.momentum.eval()  # no dropout/BN here, but the momentum model never trains

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Report]:
        images = to_model_input(batch["image"].to(self.device, non_blocking=True), self.mean, self.std)
        ids = batch["tokens"].to(self.device, non_blocking=True).long()
        pad = padding_mask(ids)  # of the unmasked ids: a masked caption may have lost its EOT
        masked, labels = mask_tokens(ids, pad=pad, mask_id=self.module.mask_id, regular_ids=self.regular_ids,
                                     probability=self.cfg.mlm_probability, special_ids=(self.sot_id, self.eot_id))
        alpha = self.alpha()
        with torch.no_grad():
            self.module.clamp_temp()
            mm = self.momentum
            image_tokens_m = mm.image_tokens(images)
            image_feat_m = mm.image_feat(image_tokens_m).float()
            text_feat_m = mm.text_feat(mm.text_hidden(ids, pad)).float()
            image_keys = torch.cat([image_feat_m, self.image_queue.keys()])
            text_keys = torch.cat([text_feat_m, self.text_queue.keys()])
            temp = self.module.temp.detach()
            sim_i2t_m = image_feat_m @ text_keys.T / temp
            sim_t2i_m = text_feat_m @ image_keys.T / temp
            mlm_logits_m = None
            if alpha > 0:
                fused_m = mm.fuse(mm.text_hidden(masked, pad), pad, image_tokens_m)
                mlm_logits_m = mm.mlm_logits(fused_m[labels != -100])
        losses = self.model(images, ids, pad, masked, labels, image_keys, text_keys, sim_i2t_m, sim_t2i_m,
                            mlm_logits_m, alpha)
        self._pending = (image_feat_m, text_feat_m)
        report: Report = {"temp": temp.clone(), "alpha": alpha, "queue_filled": float(self.image_queue.filled)}
        return losses, report

    @torch.no_grad()
    def after_step(self) -> None:
        self.module.clamp_temp()
        m = self.cfg.momentum
        for p_m, p in zip(self.momentum.parameters(), self.module.parameters()):
            p_m.mul_(m).add_(p.detach(), alpha=1 - m)
        if self._pending is not None:
            image_feat_m, text_feat_m = (self._gather(x) for x in self._pending)
            self.image_queue.push(image_feat_m)
            self.text_queue.push(text_feat_m)
            self._pending = None
        self.steps += 1

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return x
        out = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "momentum": self.momentum.state_dict(),
                "image_queue": self.image_queue.state_dict(), "text_queue": self.text_queue.state_dict(),
                "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.momentum.load_state_dict(state["momentum"])
        self.image_queue.load_state_dict(state["image_queue"])
        self.text_queue.load_state_dict(state["text_queue"])
        self.steps = int(state["steps"])


@objective_registry.register("albef")
def _albef(config: PipelineConfig, **kw: Any) -> Objective:
    return AlbefObjective(config, **kw)
