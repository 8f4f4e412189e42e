"""What a run logs besides metrics: a picture of a sample batch, evaluation plots, the pyfunc model,
and MLflow's system metrics while the driver runs."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from clipray.config import PipelineConfig
from clipray.errors import MissingFileError


@contextmanager
def system_metrics(tracking_uri: str, run_id: str, interval_s: float = 10.0) -> Iterator[None]:
    """MLflow's CPU/memory/disk/network (and GPU) sampler on the driver's node, into `run_id`."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=tracking_uri)
    except ImportError:  # psutil missing: the run still trains, without system metrics
        monitor = None
    if monitor is not None:
        monitor.start()
    try:
        yield
    finally:
        if monitor is not None:
            monitor.finish()


def sample_batch_figure(images: np.ndarray, captions: list[str], path: Path, cols: int = 4) -> Path:
    """A grid of images (uint8 N,S,S,3) with their captions underneath, as PNG."""
    import textwrap

    from PIL import Image, ImageDraw

    n = len(images)
    size = max(96, images.shape[1])
    rows = (n + cols - 1) // cols
    cap_h = 40
    sheet = Image.new("RGB", (cols * size, rows * (size + cap_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, cap) in enumerate(zip(images, captions)):
        x, y = (i % cols) * size, (i // cols) * (size + cap_h)
        sheet.paste(Image.fromarray(img).resize((size, size)), (x, y))
        draw.multiline_text((x + 2, y + size + 2), "\n".join(textwrap.wrap(cap, 18)[:3]), fill="black")
    sheet.save(path)
    return path


def confusion_figure(confusion: np.ndarray, classes: list[str], path: Path) -> Path:
    """Zero-shot confusion matrix as a PNG heat map (rows: true class, columns: predicted)."""
    from PIL import Image, ImageDraw

    c = len(classes)
    cell, margin = 14, 120
    norm = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    img = Image.new("RGB", (margin + c * cell, margin + c * cell), "white")
    draw = ImageDraw.Draw(img)
    for i in range(c):
        draw.text((2, margin + i * cell), classes[i][:18], fill="black")
        for j in range(c):
            v = int(255 * (1 - norm[i, j]))
            draw.rectangle([margin + j * cell, margin + i * cell, margin + (j + 1) * cell - 1,
                            margin + (i + 1) * cell - 1], fill=(v, v, 255))
    draw.text((margin, 2), "zero-shot confusion (row: true, col: predicted)", fill="black")
    img.save(path)
    return path


def log_sample_batch(tracker: Any, config: PipelineConfig, n: int = 8) -> None:
    """Read a few rows of the training source through the eval preprocessing; log the picture."""
    import pyarrow.parquet as pq

    from clipray.data.ops.base import CountingStats
    from clipray.data.pipeline import Preprocess

    first, filesystem = first_source_file(config)
    dataset = pq.ParquetDataset(first, filesystem=filesystem)
    table = dataset.fragments[0].head(n * 2, columns=[config.data.key_column, config.data.caption_column,
                                                     config.data.image_column])
    batch: dict[str, Any] = {"key": np.asarray(table.column(config.data.key_column).to_pylist()).astype(str),
                             config.data.image_column: table.column(config.data.image_column).to_pylist(),
                             "caption": np.asarray(table.column(config.data.caption_column).to_pylist(), dtype=object)}
    stats = CountingStats()
    for op in Preprocess(config, train=False, names=("decode", "image_transform")).ops:
        batch = op(batch, stats)
    with tempfile.TemporaryDirectory() as tmp:
        path = sample_batch_figure(batch["image"][:n], [str(c) for c in batch["caption"][:n]],
                                   Path(tmp) / "sample_batch.png")
        tracker.log_artifact(str(path), "samples")


def zero_shot_confusion(model: Any, config: PipelineConfig) -> tuple[np.ndarray, list[str]]:
    import torch

    from clipray.eval.zeroshot import (
        class_weights,
        embed_images,
        load_zeroshot_task,
        text_encoder_input,
    )

    task = load_zeroshot_task(config)
    device = torch.device("cpu")
    weights = class_weights(model, text_encoder_input(config), task.classes, task.templates, device)
    pred = (embed_images(model, task.images, config, device) @ weights.T).argmax(-1).numpy()
    c = len(task.classes)
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (np.asarray(task.labels), pred), 1)
    return confusion, task.classes


def log_eval_plots(tracker: Any, model: Any, config: PipelineConfig) -> None:
    if not config.eval.zeroshot_source:
        return
    confusion, classes = zero_shot_confusion(model, config)
    with tempfile.TemporaryDirectory() as tmp:
        tracker.log_artifact(str(confusion_figure(confusion, classes, Path(tmp) / "zeroshot_confusion.png")), "eval")


def first_example(config: PipelineConfig) -> tuple[bytes, str]:
    """One encoded image and one caption from the training source (the pyfunc input example)."""
    import pyarrow.parquet as pq

    first, filesystem = first_source_file(config)
    table = pq.ParquetDataset(first, filesystem=filesystem).fragments[0].head(
        64, columns=[config.data.caption_column, config.data.image_column])
    from PIL import Image

    for img, cap in zip(table.column(config.data.image_column).to_pylist(),
                        table.column(config.data.caption_column).to_pylist()):
        if img and cap:
            try:
                import io

                Image.open(io.BytesIO(img)).load()
                return img, cap
            except Exception:  # a row broken on purpose; take the next
                continue
    raise ValueError(f"no decodable image with a caption in the first rows of {config.data.source}")


def first_source_file(config: PipelineConfig) -> tuple[str, Any]:
    """The first parquet file of data.source (a file, a directory or a glob) and its filesystem."""
    from clipray.data.sources import resolve

    resolved: Any = resolve(config.data.source, config.data.endpoint_url)
    if hasattr(resolved, "files"):  # a Source object (files, filesystem)
        return resolved.files[0], resolved.filesystem
    paths, filesystem = resolved
    if isinstance(paths, list):
        return paths[0], filesystem
    if filesystem is None and Path(paths).is_dir():
        files = sorted(Path(paths).rglob("*.parquet"))
        if not files:
            raise MissingFileError(f"data.source {config.data.source!r} holds no parquet file")
        return str(files[0]), None
    return paths, filesystem
