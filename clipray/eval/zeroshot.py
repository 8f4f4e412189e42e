"""Zero-shot classification with prompt-template ensembles.

Class weights: w_c = normalize(mean_k normalize(g(template_k(name_c)))); prediction
argmax_c <normalize(f(x)), w_c>.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from clipray.config import PipelineConfig
from clipray.data.ops.base import CountingStats
from clipray.data.pipeline import Preprocess
from clipray.models.common.image import to_model_input
from clipray.text import load_tokenizer


@dataclass
class ZeroShotTask:
    images: np.ndarray  # uint8 (N, S, S, 3)
    labels: np.ndarray  # int (N,)
    classes: list[str]
    templates: list[str]


def load_zeroshot_task(config: PipelineConfig, source: str | None = None) -> ZeroShotTask:
    """Labelled images (parquet with `jpg`, `label`) and `classes.json` beside them."""
    source = source or config.eval.zeroshot_source
    if not source:
        raise ValueError("eval.zeroshot_source is not set")
    classes_file = Path(config.eval.classes_file or Path(source) / "classes.json")
    if not classes_file.exists():
        raise FileNotFoundError(f"zero-shot classes file not found: {classes_file}")
    meta = json.loads(classes_file.read_text())
    files = sorted(Path(source).glob("*.parquet")) if Path(source).is_dir() else [Path(source)]
    if not files:
        raise FileNotFoundError(f"no parquet files in the zero-shot set {source}")
    table = pa.concat_tables([pq.read_table(f, columns=["key", config.data.image_column, "label"]) for f in files])
    prep = Preprocess(config, train=False, names=("decode", "image_transform"))
    counts = CountingStats()
    batch = {"key": table.column("key").to_numpy(zero_copy_only=False),
             config.data.image_column: table.column(config.data.image_column).to_pylist(),
             "label": table.column("label").to_numpy()}
    for op in prep.ops:
        batch = op(batch, counts)
    if counts.dropped:
        raise ValueError(f"zero-shot set {source} has undecodable images: {dict(counts.dropped)}")
    return ZeroShotTask(batch["image"], np.asarray(batch["label"]), list(meta["classes"]),
                        list(meta.get("templates") or ["{}"]))


def text_encoder_input(config: PipelineConfig) -> Callable[[list[str]], torch.Tensor]:
    """Strings -> what the model's text tower reads, exactly as in training: token ids
    (`text.kind: tokens`) or CLIPPO-rendered, normalised pixels (`text.kind: pixels`)."""
    if config.text.kind == "pixels":
        from clipray.text.render import UnifontRenderer

        renderer = UnifontRenderer(config.text.font, image_size=config.model.vision.image_size)
        return lambda texts: to_model_input(torch.from_numpy(renderer(texts)), config.image.mean, config.image.std)
    tokenizer = load_tokenizer(config.text.tokenizer, config.model.text.context_length)
    return lambda texts: torch.from_numpy(tokenizer(texts)).long()


@torch.no_grad()
def class_weights(model: Any, encode_input: Callable[[list[str]], torch.Tensor], classes: list[str],
                  templates: list[str], device: torch.device) -> torch.Tensor:
    weights = []
    for name in classes:
        inputs = encode_input([t.format(name) for t in templates]).to(device)
        emb = F.normalize(model.encode_text(inputs).float(), dim=-1).mean(0)
        weights.append(F.normalize(emb, dim=-1))
    return torch.stack(weights)  # C, D


@torch.no_grad()
def embed_images(model: Any, images: np.ndarray, config: PipelineConfig, device: torch.device,
                 batch_size: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch_size):
        x = to_model_input(torch.from_numpy(images[i : i + batch_size]).to(device), config.image.mean,
                           config.image.std)
        out.append(F.normalize(model.encode_image(x).float(), dim=-1))
    return torch.cat(out)


def zero_shot_eval(model: Any, config: PipelineConfig, task: ZeroShotTask,
                   device: torch.device | str = "cpu") -> dict[str, float]:
    device = torch.device(device)
    was_training = model.training
    model.eval()
    weights = class_weights(model, text_encoder_input(config), task.classes, task.templates, device)
    feats = embed_images(model, task.images, config, device, config.eval.batch_size)
    logits = feats @ weights.T
    labels = torch.from_numpy(np.array(task.labels)).to(device)
    top1 = (logits.argmax(-1) == labels).float().mean().item()
    k = min(5, len(task.classes))
    top5 = (logits.topk(k, dim=-1).indices == labels[:, None]).any(-1).float().mean().item()
    model.train(was_training)
    return {"eval/zeroshot_top1": top1, "eval/zeroshot_top5": top5,
            "eval/zeroshot_classes": float(len(task.classes)), "eval/zeroshot_chance": 1.0 / len(task.classes)}
