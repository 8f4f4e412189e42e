"""The evaluation set and zero-shot classification metrics.

Class weights (`clipray.eval.suite.class_weights`): w_c = normalize(mean_k normalize(g(template_k(name_c))));
prediction argmax_c <normalize(f(x)), w_c>.

`classes.json` may also give each class attributes (`"attributes": {"colour": [one value per
class], "shape": [...]}`); top-1 is then also reported per attribute: the share of images whose
predicted class has the true class's value of that attribute (`eval/zeroshot_top1_<attribute>`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from clipray.config import PipelineConfig
from clipray.errors import InvalidInputError, MissingFileError
from clipray.models.inputs import decode_images


@dataclass
class ZeroShotTask:
    """The evaluation set: labelled images, class names and prompt templates."""

    images: np.ndarray | None  # uint8 (N, S, S, 3); None when the caller embeds them elsewhere (Ray Data)
    labels: np.ndarray  # int (N,)
    classes: list[str]
    templates: list[str]
    captions: list[str] | None = None  # per image, for retrieval and the modality gap
    attributes: dict[str, list[str]] | None = None  # attribute -> value per class (classes.json)


def load_classes(source: str, classes_file: str | None = None) -> tuple[list[str], list[str]]:
    """Class names and prompt templates from `classes_file`, default `classes.json` beside `source`."""
    _, meta = _read_classes_file(source, classes_file)
    return list(meta["classes"]), list(meta.get("templates") or ["{}"])


def load_class_attributes(source: str, classes_file: str | None = None) -> dict[str, list[str]] | None:
    """The optional `attributes` of the classes file: {name: [value of each class]}, or None."""
    path, meta = _read_classes_file(source, classes_file)
    attributes = meta.get("attributes")
    if attributes is None:
        return None
    n = len(meta["classes"])
    if not isinstance(attributes, dict) or not all(
            isinstance(v, list) and len(v) == n for v in attributes.values()):
        raise InvalidInputError(f"{path}: 'attributes' must map each attribute name to a list of {n} values, one per "
                         f"class")
    return {str(name): [str(v) for v in values] for name, values in attributes.items()}


def _read_classes_file(source: str, classes_file: str | None) -> tuple[Path, dict[str, Any]]:
    src = Path(source)
    path = Path(classes_file) if classes_file else (src.parent if src.suffix == ".parquet" else src) / "classes.json"
    if not path.exists():
        raise MissingFileError(f"zero-shot classes file not found: {path} (a JSON object {{\"classes\": [...], "
                                f"\"templates\": [...]}} beside the parquet files, or name one with --classes or "
                                f"eval.classes_file)")
    meta = json.loads(path.read_text())
    if not isinstance(meta, dict) or not meta.get("classes"):
        raise InvalidInputError(f"{path}: expected a JSON object with a non-empty 'classes' list")
    return path, meta


def parquet_files(source: str) -> list[Path]:
    files = sorted(Path(source).glob("*.parquet")) if Path(source).is_dir() else [Path(source)]
    if not files or not files[0].exists():
        raise MissingFileError(f"no parquet files in the evaluation set {source}")
    return files


def load_zeroshot_task(config: PipelineConfig, source: str | None = None) -> ZeroShotTask:
    """Labelled images (parquet with `jpg`, `label`, optional `caption`) and `classes.json` beside them,
    decoded once through the model's evaluation image ops (`clipray.models.inputs.decode_images`)."""
    source = source or config.eval.zeroshot_source
    if not source:
        raise InvalidInputError("eval.zeroshot_source is not set")
    files = parquet_files(source)
    classes, templates = load_classes(source, config.eval.classes_file)
    has_caption = "caption" in pq.read_schema(files[0]).names
    columns = ["key", config.data.image_column, "label"] + (["caption"] if has_caption else [])
    table = pa.concat_tables([pq.read_table(f, columns=columns) for f in files])
    batch = {"key": table.column("key").to_numpy(zero_copy_only=False),
             config.data.image_column: table.column(config.data.image_column).to_pylist(),
             "label": table.column("label").to_numpy()}
    if has_caption:
        batch["caption"] = table.column("caption").to_pylist()
    batch, dropped = decode_images(config, batch)
    if dropped:
        raise InvalidInputError(f"zero-shot set {source} has undecodable images: {dropped}")
    return ZeroShotTask(batch["image"], np.asarray(batch["label"]), classes, templates,
                        list(batch["caption"]) if has_caption else None,
                        load_class_attributes(source, config.eval.classes_file))


def zero_shot_metrics(image_emb: torch.Tensor, labels: np.ndarray | Sequence[int], weights: torch.Tensor,
                      attributes: Mapping[str, Sequence[str]] | None = None) -> dict[str, float]:
    """Top-1/top-5 of argmax_c <normalize(f(x)), w_c> against the integer labels; with
    `attributes` ({name: value per class}) also top-1 per attribute."""
    feats = F.normalize(image_emb.float(), dim=-1)
    logits = feats @ weights.to(feats.device).float().T
    labels_t = torch.as_tensor(np.array(labels), device=feats.device)  # a copy: arrow-backed arrays are read-only
    n_classes = weights.shape[0]
    pred = logits.argmax(-1)
    top1 = (pred == labels_t).float().mean().item()
    k = min(5, n_classes)
    top5 = (logits.topk(k, dim=-1).indices == labels_t[:, None]).any(-1).float().mean().item()
    out = {"eval/zeroshot_top1": top1, "eval/zeroshot_top5": top5,
           "eval/zeroshot_classes": float(n_classes), "eval/zeroshot_chance": 1.0 / n_classes}
    for name, values in (attributes or {}).items():
        # Each class's value as an index: the prediction is right on this attribute when the
        # predicted class shares the true class's value (a confusion within the attribute's group).
        codes = {v: i for i, v in enumerate(dict.fromkeys(values))}
        of_class = torch.tensor([codes[v] for v in values], device=feats.device)
        out[f"eval/zeroshot_top1_{name}"] = (of_class[pred] == of_class[labels_t]).float().mean().item()
    return out
