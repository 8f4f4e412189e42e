"""All evaluation metrics from embeddings: zero-shot, retrieval, modality gap.

One function computes every metric from image embeddings, labels, captions and text embeddings,
whether the image embeddings came from a Ray Data batch-inference stage (`clipray eval`) or from
the model in the training process (periodic evaluation on rank 0, the launcher's final eval).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipray.config import PipelineConfig
from clipray.eval.gap import modality_gap
from clipray.eval.retrieval import caption_groups, retrieval_metrics
from clipray.eval.zeroshot import (
    ZeroShotTask,
    class_weights,
    embed_images,
    text_encoder_input,
    zero_shot_metrics,
)

TextEncoder = Callable[[list[str]], torch.Tensor]  # texts -> L2-normalised embeddings (N, D)


def compute_metrics(image_emb: torch.Tensor, labels: np.ndarray | Sequence[int], captions: Sequence[str] | None,
                    classes: list[str], templates: list[str], encode_texts: TextEncoder,
                    attributes: Mapping[str, Sequence[str]] | None = None) -> dict[str, float]:
    """Zero-shot top-1/5 over `classes` x `templates` (and top-1 per attribute of the classes,
    when given); with captions also Recall@1/5/10 both ways and the gap."""
    image_emb = F.normalize(image_emb.float(), dim=-1)
    prompts = [t.format(name) for name in classes for t in templates]
    prompt_emb = encode_texts(prompts).view(len(classes), len(templates), -1)
    weights = F.normalize(prompt_emb.mean(1), dim=-1)  # ensemble of normalised prompt embeddings
    metrics = zero_shot_metrics(image_emb, labels, weights, attributes)
    if captions is not None:
        unique, groups = caption_groups(list(captions))
        text_emb = encode_texts(unique).to(image_emb.device)
        metrics.update(retrieval_metrics(image_emb, text_emb, groups, np.arange(len(unique))))
        metrics.update(modality_gap(image_emb, text_emb[torch.as_tensor(groups, device=text_emb.device)]))
        metrics["eval/images"] = float(image_emb.shape[0])
        metrics["eval/captions"] = float(len(unique))
    return metrics


def text_encoder(model: Any, config: PipelineConfig, device: torch.device | str = "cpu",
                 batch_size: int = 256) -> TextEncoder:
    to_input = text_encoder_input(config)  # token ids, or rendered pixels for text_encoding.kind: pixels

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            inputs = to_input(texts[i : i + batch_size]).to(device)
            out.append(F.normalize(model.encode_text(inputs).float(), dim=-1))
        return torch.cat(out)

    return encode


def evaluate_in_process(model: Any, config: PipelineConfig, task: ZeroShotTask,
                        device: torch.device | str = "cpu") -> dict[str, float]:
    """Every metric for a model held in this process (no Ray): periodic and end-of-run evaluation."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        feats = embed_images(model, task.images, config, device, config.eval.batch_size)
        metrics = compute_metrics(feats, task.labels, task.captions, task.classes, task.templates,
                                  text_encoder(model, config, device, config.eval.batch_size), task.attributes)
        if hasattr(model, "logit_scale"):
            metrics["eval/logit_scale"] = float(model.logit_scale.detach().exp())
    finally:
        model.train(was_training)
    return metrics


__all__ = ["class_weights", "compute_metrics", "evaluate_in_process", "text_encoder"]
