"""What a run logs besides metrics: a picture of a sample batch, the drawing of the evaluation
plots (zero-shot confusion matrix, a retrieval sheet; computed by `clipray.eval.plots`), the loss
and learning-rate curves, and MLflow's system metrics while the driver runs. Pictures are drawn
with Pillow alone."""

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

    from clipray.models.inputs import decode_images

    first, filesystem = first_source_file(config)
    dataset = pq.ParquetDataset(first, filesystem=filesystem)
    table = dataset.fragments[0].head(n * 2, columns=[config.data.key_column, config.data.caption_column,
                                                     config.data.image_column])
    batch: dict[str, Any] = {"key": np.asarray(table.column(config.data.key_column).to_pylist()).astype(str),
                             config.data.image_column: table.column(config.data.image_column).to_pylist(),
                             "caption": np.asarray(table.column(config.data.caption_column).to_pylist(), dtype=object)}
    batch, _ = decode_images(config, batch)  # a row broken on purpose is left out of the picture
    with tempfile.TemporaryDirectory() as tmp:
        path = sample_batch_figure(batch["image"][:n], [str(c) for c in batch["caption"][:n]],
                                   Path(tmp) / "sample_batch.png")
        tracker.log_artifact(str(path), "samples")


def retrieval_queries(classes: list[str], templates: list[str], n: int = 6) -> list[tuple[str, int]]:
    """`n` text queries spread evenly over the classes: (the first template filled in, class index)."""
    m = min(n, len(classes))
    picks = sorted({round(i * (len(classes) - 1) / max(1, m - 1)) for i in range(m)})
    return [(templates[0].format(classes[i]), i) for i in picks]


def retrieval_sheet(queries: list[str], images: np.ndarray, top: np.ndarray, hits: np.ndarray, path: Path,
                    tile: int = 72) -> Path:
    """One row per text query: the query, then its top-k images (uint8 N,S,S,3) in rank order.

    `top` (Q, k) holds image indices, `hits` (Q, k) whether each is of the query's class: a green
    frame marks a hit, a red one a miss.
    """
    import textwrap

    from PIL import Image, ImageDraw

    label_w, pad = 170, 4
    q, k = top.shape
    sheet = Image.new("RGB", (label_w + k * (tile + pad) + pad, pad + q * (tile + pad) + 18), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 2), "text query -> top images (green: right class, red: wrong)", fill="black")
    for row in range(q):
        y = 18 + pad + row * (tile + pad)
        lines = textwrap.wrap(queries[row], 24)[:4]
        draw.multiline_text((pad, y + tile // 2 - 6 * len(lines)), "\n".join(lines), fill="black")
        for col in range(k):
            x = label_w + pad + col * (tile + pad)
            frame = (40, 160, 60) if hits[row, col] else (200, 40, 40)
            draw.rectangle([x - 2, y - 2, x + tile + 1, y + tile + 1], fill=frame)
            sheet.paste(Image.fromarray(images[top[row, col]]).resize((tile, tile)), (x, y))
    sheet.save(path)
    return path


def line_chart(series: dict[str, list[tuple[int, float]]], path: Path, width: int = 640,
               panel_h: int = 200) -> Path:
    """One panel per named series (step, value), stacked, with min/max and step labels."""
    from PIL import Image, ImageDraw

    left, right, top, gap = 70, 16, 22, 26
    names = [n for n in series if series[n]]
    img = Image.new("RGB", (width, max(1, len(names)) * (panel_h + gap) + 10), "white")
    draw = ImageDraw.Draw(img)
    for i, name in enumerate(names):
        points = sorted(series[name])
        y0 = i * (panel_h + gap) + top
        h = panel_h - top
        x_lo, x_hi = points[0][0], max(points[-1][0], points[0][0] + 1)
        values = [v for _, v in points]
        v_lo, v_hi = min(values), max(values)
        span = (v_hi - v_lo) or 1.0
        draw.text((left, y0 - 16), name, fill="black")
        draw.rectangle([left, y0, width - right, y0 + h], outline=(160, 160, 160))
        for frac in (0.25, 0.5, 0.75):  # light horizontal grid
            y = y0 + h * frac
            draw.line([(left + 1, y), (width - right - 1, y)], fill=(230, 230, 230))
        draw.text((4, y0 - 4), f"{v_hi:.3g}", fill="black")
        draw.text((4, y0 + h - 8), f"{v_lo:.3g}", fill="black")
        draw.text((left, y0 + h + 2), str(x_lo), fill="black")
        draw.text((width - right - 40, y0 + h + 2), f"step {x_hi}", fill="black")
        xy = [(left + (s - x_lo) / (x_hi - x_lo) * (width - left - right), y0 + h - (v - v_lo) / span * h)
              for s, v in points]
        if len(xy) == 1:
            draw.ellipse([xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2], fill=(30, 70, 200))
        else:
            draw.line(xy, fill=(30, 70, 200), width=2)
    img.save(path)
    return path


CURVES = ("train/loss", "train/lr")


def log_training_curves(tracker: Any) -> None:
    """The run's loss and learning-rate history (as MLflow holds it) as `curves/training.png`."""
    client = getattr(tracker, "client", None)
    if client is None:  # a null tracker keeps no history
        return
    series = {name: [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, name)] for name in CURVES}
    if not any(series.values()):
        return
    with tempfile.TemporaryDirectory() as tmp:
        tracker.log_artifact(str(line_chart(series, Path(tmp) / "training.png")), "curves")


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
