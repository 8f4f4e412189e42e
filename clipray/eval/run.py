"""`clipray eval` and `clipray embed`: driver side.

eval: resolve the model -> embed the evaluation images as a Ray Data batch-inference stage ->
`clipray.eval.suite.evaluate` with those embeddings (class prompts and captions, a few hundred
texts, embedded in the driver; zero-shot, retrieval, modality gap) -> MLflow + a printed table.

Where results go in MLflow: a model given by run id is evaluated *into that run* (metrics
`eval/<set>/<metric>` at the run's final step, and `eval/<set>.json` as an artifact), so a
training run carries its own evaluations. A model given as a checkpoint directory has no run;
a new run is created in the experiment `--experiment` (default `clipray-eval`), tagged with
the checkpoint's location, and the same metrics go there.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from clipray.errors import InvalidInputError
from clipray.eval.embed import EmbedOptions, collect, embed_dataset, embeddings
from clipray.eval.loading import CHECKPOINT_TAG, ModelSource, load_model, resolve_model
from clipray.eval.suite import evaluate as evaluate_model
from clipray.eval.zeroshot import ZeroShotTask, load_class_attributes, load_classes, parquet_files

ROWS = [("zero-shot top-1", "zeroshot_top1"), ("zero-shot top-5", "zeroshot_top5"),
        ("chance (1 / classes)", "zeroshot_chance"),
        ("image->text R@1", "i2t_r1"), ("image->text R@5", "i2t_r5"), ("image->text R@10", "i2t_r10"),
        ("text->image R@1", "t2i_r1"), ("text->image R@5", "t2i_r5"), ("text->image R@10", "t2i_r10"),
        ("modality gap", "modality_gap"), ("matched-pair cosine", "matched_cos"),
        ("random-pair cosine", "random_cos"), ("logit scale", "logit_scale")]


@dataclass
class EvalResult:
    name: str
    metrics: dict[str, float]
    run_id: str | None
    tracking_uri: str
    elapsed_s: float


def set_name(data: str) -> str:
    """`data/digits/eval` -> "digits"; `sets/mnist` -> "mnist"."""
    p = Path(data.rstrip("/"))
    if p.suffix == ".parquet":
        p = p.parent
    return p.parent.name if p.name in ("eval", "test", "val") and p.parent.name else p.name


def evaluate(model_ref: str, data: str, *, classes_file: str | None = None, name: str | None = None,
             tracking_uri: str | None = None, experiment: str = "clipray-eval", log: bool = True,
             options: EmbedOptions | None = None) -> EvalResult:
    from clipray.runtime import init_ray
    from clipray.tracking import resolve_tracking_uri

    started = time.monotonic()
    files = parquet_files(data)  # the local inputs first: they fail faster than a model lookup
    classes, templates = load_classes(data, classes_file)
    attributes = load_class_attributes(data, classes_file)
    source = resolve_model(model_ref, tracking_uri)
    config = source.config
    name = name or set_name(data)
    schema = pq.read_schema(files[0]).names
    missing = {config.data.image_column, "label"} - set(schema)
    if missing:
        raise InvalidInputError(f"evaluation set {data}: parquet lacks column(s) {sorted(missing)} (has {schema})")
    has_caption = "caption" in schema
    init_ray(config)
    passthrough = ("key", "label") + (("caption",) if has_caption else ())
    columns = [config.data.image_column, *passthrough]
    table = collect(embed_dataset(config, source.state_dict, data, modality="image", columns=columns,
                                  passthrough=passthrough, options=options or EmbedOptions()))
    # The images were embedded by the Ray Data stage above; the rest is the one in-process evaluation.
    task = ZeroShotTask(None, np.asarray(table.column("label").to_numpy()), classes, templates,
                        table.column("caption").to_pylist() if has_caption else None, attributes)
    metrics = evaluate_model(load_model(source).model, config, task,
                             image_emb=torch.from_numpy(embeddings(table))).metrics
    uri = resolve_tracking_uri(tracking_uri)
    run_id = _log(source, name, metrics, uri, experiment, model_ref, data) if log else None
    return EvalResult(name, metrics, run_id, uri, time.monotonic() - started)


def _log(source: ModelSource, name: str, metrics: dict[str, float], uri: str, experiment: str,
         model_ref: str, data: str) -> str:
    from clipray.tracking import MlflowTracker, start_run

    if source.run_id is not None:
        tracker = MlflowTracker(uri, source.run_id)
    else:
        tracker = start_run(experiment, uri, run_name=f"eval-{name}",
                            tags={CHECKPOINT_TAG: source.checkpoint, "clipray.pipeline": source.config.name})
    named = {k.replace("eval/", f"eval/{name}/", 1): v for k, v in metrics.items()}
    tracker.log_metrics(named, step=source.step)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps({"model": model_ref, "data": os.path.abspath(data), "metrics": metrics}, indent=1))
        tracker.log_artifact(str(path), "eval")
    if source.run_id is None:
        tracker.close("FINISHED")
    assert tracker.run_id is not None
    return tracker.run_id


def attribute_top1(metrics: dict[str, float]) -> dict[str, float]:
    """{attribute: top-1} from `eval/zeroshot_top1_<attribute>` metrics."""
    prefix = "eval/zeroshot_top1_"
    return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}


def format_table(result: EvalResult) -> str:
    m = result.metrics
    n = int(m.get("eval/zeroshot_classes", 0))
    lines = [f"evaluation set {result.name!r}: {int(m.get('eval/images', 0))} images, {n} classes, "
             f"{int(m.get('eval/captions', 0))} distinct captions", "", "| metric | value |", "|---|---|"]
    for label, key in ROWS:
        if f"eval/{key}" in m:
            lines.append(f"| {label} | {m[f'eval/{key}']:.4f} |")
        if key == "zeroshot_top1":  # then top-1 by attribute of the classes, where classes.json has them
            for name, value in attribute_top1(m).items():
                lines.append(f"| zero-shot top-1, {name} | {value:.4f} |")
    return "\n".join(lines)


def embed(model_ref: str, data: str, out: str, *, modality: str, column: str | None = None,
          keep: tuple[str, ...] = ("key",), tracking_uri: str | None = None,
          options: EmbedOptions | None = None) -> dict[str, Any]:
    """Write `out/*.parquet` with the pass-through columns and `embedding` for every row of `data`."""
    from clipray.runtime import init_ray

    source = resolve_model(model_ref, tracking_uri)
    config = source.config
    col = column or (config.data.image_column if modality == "image" else config.data.caption_column)
    schema = pq.read_schema(parquet_files(data)[0]).names if "://" not in data else None
    if schema is not None and col not in schema:
        raise InvalidInputError(f"{data}: no column {col!r} to embed (has {schema})")
    keep = tuple(k for k in keep if schema is None or k in schema)
    init_ray(config)
    started = time.monotonic()
    ds = embed_dataset(config, source.state_dict, data, modality=modality, columns=list(dict.fromkeys([col, *keep])),
                       passthrough=keep, options=options or EmbedOptions(), text_column=col)
    ds.write_parquet(out)
    elapsed = time.monotonic() - started
    rows = sum(pq.read_metadata(f).num_rows for f in Path(out).glob("*.parquet")) if "://" not in out else -1
    return {"rows": rows, "out": out, "elapsed_s": elapsed, "dim": config.model.embed_dim}
