"""The one evaluation of a model: zero-shot, retrieval and modality gap on an evaluation set.

`evaluate(model, config, task)` is what every evaluation runs: training's final evaluation
(`clipray.train.launcher`), periodic evaluation on rank 0 (`clipray.eval.periodic`), `clipray eval`
(`clipray.eval.run`, whose image embeddings come from a Ray Data batch-inference stage and are
passed in) and both sides of the champion gate (`clipray.schedule.retrain`). Two models scored
on the same task by it are compared on the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipray.config import PipelineConfig
from clipray.eval.gap import modality_gap
from clipray.eval.retrieval import caption_groups, retrieval_metrics
from clipray.eval.zeroshot import ZeroShotTask, zero_shot_metrics
from clipray.models.inputs import embed_images, embed_texts, text_input

TextEncoder = Callable[[list[str]], torch.Tensor]  # texts -> L2-normalised embeddings (N, D)


@dataclass
class Evaluation:
    metrics: dict[str, float]
    image_emb: torch.Tensor  # (N, D), L2-normalised, in the task's row order
    class_weights: torch.Tensor  # (C, D), the zero-shot classifier


def class_weights(encode_texts: TextEncoder, classes: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """w_c = normalize(mean_k normalize(g(template_k(name_c)))): the prompt-ensemble classifier (C, D)."""
    prompts = [t.format(name) for name in classes for t in templates]
    prompt_emb = F.normalize(encode_texts(prompts).float(), dim=-1).view(len(classes), len(templates), -1)
    return F.normalize(prompt_emb.mean(1), dim=-1)


def score_embeddings(image_emb: torch.Tensor, labels: np.ndarray | Sequence[int], captions: Sequence[str] | None,
                     classes: list[str], templates: list[str], encode_texts: TextEncoder,
                     attributes: Mapping[str, Sequence[str]] | None = None) -> Evaluation:
    """Zero-shot top-1/5 over `classes` x `templates` (and top-1 per attribute of the classes,
    when given); with captions also Recall@1/5/10 both ways and the gap."""
    image_emb = F.normalize(image_emb.float(), dim=-1)
    weights = class_weights(encode_texts, classes, templates).to(image_emb.device)
    metrics = zero_shot_metrics(image_emb, labels, weights, attributes)
    if captions is not None:
        unique, groups = caption_groups(list(captions))
        text_emb = encode_texts(unique).to(image_emb.device)
        metrics.update(retrieval_metrics(image_emb, text_emb, groups, np.arange(len(unique))))
        metrics.update(modality_gap(image_emb, text_emb[torch.as_tensor(groups, device=text_emb.device)]))
        metrics["eval/captions"] = float(len(unique))
    metrics["eval/images"] = float(image_emb.shape[0])
    return Evaluation(metrics, image_emb, weights)


def evaluate(model: Any, config: PipelineConfig, task: ZeroShotTask, device: torch.device | str = "cpu", *,
             image_emb: torch.Tensor | None = None) -> Evaluation:
    """Every metric of `model` (a dual encoder in this process) on `task`.

    `config` gives the model's inputs (image normalisation, tokenizer or renderer) and the batch
    size. `image_emb`: the task's image embeddings when the caller computed them elsewhere (rows in
    the order of `task.labels`); otherwise the images are embedded here. The model's train/eval
    mode is restored afterwards.
    """
    device = torch.device(device)
    batch_size = config.eval.batch_size
    was_training = model.training
    model.eval()
    try:
        if image_emb is None:
            if task.images is None:
                raise ValueError("evaluate: the task has no images and no image embeddings were given")
            image_emb = embed_images(model, task.images, config, device, batch_size)
        out = score_embeddings(image_emb, task.labels, task.captions, task.classes, task.templates,
                               text_encoder(model, config, device, batch_size), task.attributes)
        if hasattr(model, "logit_scale"):
            out.metrics["eval/logit_scale"] = float(model.logit_scale.detach().exp())
    finally:
        model.train(was_training)
    return out


def text_encoder(model: Any, config: PipelineConfig, device: torch.device | str = "cpu",
                 batch_size: int = 256) -> TextEncoder:
    """texts -> the model's L2-normalised text embeddings, the texts encoded as in training."""
    to_input = text_input(config)
    return lambda texts: embed_texts(model, texts, to_input, device, batch_size)


__all__ = ["Evaluation", "class_weights", "evaluate", "score_embeddings", "text_encoder"]
