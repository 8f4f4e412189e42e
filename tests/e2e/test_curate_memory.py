"""Near-duplicate curation of a dataset several times larger than the object store completes,
and streams: the object store never held more than a fraction of the data. In the same local
Ray, the CLIP-score actor stage drops exactly the rows below `data.min_clip_score`.

A local Ray with an 80 MiB object store curates 256 MiB of images (320 rows of ~800 KiB each:
small JPEGs padded with application segments, which decoders skip, so the bytes are real row
weight but hashing stays cheap). Spilling is what a node does when its store overflows; the
test asserts the run spilled less than a quarter of the data, i.e. no stage gathered the images.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e  # both tests share one local Ray (a module fixture): ONE_WORKER_MODULES in tests/conftest.py

STORE_BYTES = 80 * 2**20
ROW_BYTES = 800 * 2**10
ROWS = 320


def _padded_jpeg(rng: np.random.Generator, base: bytes) -> bytes:
    """`base` (a JPEG) with APP9 segments of random bytes after SOI, up to ROW_BYTES."""
    segments = []
    while sum(len(s) for s in segments) < ROW_BYTES:
        payload = rng.bytes(65000)
        segments.append(b"\xff\xe9" + (len(payload) + 2).to_bytes(2, "big") + payload)
    return base[:2] + b"".join(segments) + base[2:]


def _write_dataset(root) -> int:
    rng = np.random.default_rng(0)
    bases = []
    for _ in range(40):  # 40 distinct pictures; every row is one of them, so near duplicates abound
        arr = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        bases.append(buf.getvalue())
    total = 0
    root.mkdir(parents=True)
    for f in range(16):
        jpg = [_padded_jpeg(rng, bases[(f * 20 + i) % 40]) for i in range(ROWS // 16)]
        total += sum(len(b) for b in jpg)
        pq.write_table(pa.table({"key": [f"r{f:02d}-{i:03d}" for i in range(len(jpg))],
                                 "caption": ["noise"] * len(jpg), "jpg": pa.array(jpg, pa.binary())}),
                       root / f"part-{f:05d}.parquet")
    return total


def _spilled_bytes() -> int:
    import ray
    from ray._private.internal_api import memory_summary

    # by address: other Ray instances may run on the same machine
    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    m = re.search(r"Spilled (\d+) MiB", text)
    return int(m.group(1)) * 2**20 if m else 0


@pytest.fixture(scope="module")
def small_ray(tmp_path_factory):
    """One local Ray with an 80 MiB object store for this module's curate runs."""
    import os
    import tempfile

    import ray

    short = tempfile.mkdtemp(prefix="cr-", dir="/tmp")
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "TMPDIR")}
    os.environ.update(RAY_AUTH_MODE="disabled", TMPDIR=short)
    ray.init(num_cpus=2, object_store_memory=STORE_BYTES, include_dashboard=False, _temp_dir=short,
             logging_level="warning")
    try:
        yield
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_near_dedup_of_data_several_times_the_object_store_streams(tmp_path, small_ray):
    from clipray.config import load_config
    from clipray.curation.run import curate

    data_bytes = _write_dataset(tmp_path / "train")
    assert data_bytes >= 3 * STORE_BYTES
    config = load_config(data={"name": "mem", "data": {
        "source": str(tmp_path / "train"), "dedup": "near", "decontaminate": False, "batch_size": 16,
        "concurrency": 1, "num_cpus": 0.5, "ops": ["dedup_images", "decode"]},
        "model": {"vision": {"image_size": 32, "patch_size": 8}}})
    result = curate(config, str(tmp_path / "out"), log=False)
    spilled = _spilled_bytes()
    assert result.rows_in == ROWS and result.rows_in == result.rows_out + sum(result.dropped.values())
    assert result.rows_out == 40  # one row per distinct picture
    print(f"{data_bytes / 2**20:.0f} MiB of images through an {STORE_BYTES / 2**20:.0f} MiB object store: "
          f"spilled {spilled / 2**20:.0f} MiB in {result.elapsed_s:.1f} s")
    assert spilled < data_bytes / 4


SCORE_MODEL = {"embed_dim": 16, "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
               "text": {"context_length": 16, "width": 32, "layers": 1, "heads": 2}}


def test_clip_score_actor_stage_drops_exactly_the_rows_below_the_threshold(tmp_path, small_ray):
    """`data.min_clip_score` through the Ray actor pool (the model named by a checkpoint directory):
    the rows dropped as low_clip_score are exactly those whose score, computed here in-process by
    the same model, is below the threshold; `where` drops its labelled rows first, each counted once."""
    import torch

    from clipray.config import load_config, to_dict
    from clipray.curation.run import curate
    from clipray.curation.score import ModelEncoder
    from clipray.models import build_model
    from clipray.models.checkpoint import write_state

    rng = np.random.default_rng(1)
    n = 48
    jpg = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(buf, format="JPEG")
        jpg.append(buf.getvalue())
    words = ["a red square", "a dog", "two cats", "the sea", "green", "a blue car"]
    keys = [f"s{i:03d}" for i in range(n)]
    captions = [words[i % len(words)] + f" {i}" for i in range(n)]
    unsafe = np.arange(n) % 8 == 3  # labelled: `where` drops these 6 before scoring
    (tmp_path / "train").mkdir()
    pq.write_table(pa.table({"key": keys, "caption": captions, "jpg": pa.array(jpg, pa.binary()),
                             "punsafe": np.where(unsafe, 0.9, 0.1)}), tmp_path / "train" / "part-00000.parquet")
    model_config = load_config(data={"name": "scorer", "model": SCORE_MODEL, "text_encoding": {"tokenizer": "words"}})
    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt"
    state = build_model(model_config.model).state_dict()
    write_state({"config": to_dict(model_config), "objective": {"model": state}, "step": 1}, str(ckpt))
    # the labels: each safe row's score under the same model, the threshold at their median
    safe = ~unsafe
    scores = ModelEncoder(to_dict(model_config), state).scores([j for j, s in zip(jpg, safe) if s],
                                                              [c for c, s in zip(captions, safe) if s])
    threshold = float(np.median(scores))
    low = {k for k, sc in zip(np.array(keys)[safe], scores) if sc < threshold}
    assert 0 < len(low) < safe.sum()
    config = load_config(data={"name": "score", "data": {
        "source": str(tmp_path / "train"), "dedup": "off", "decontaminate": False, "batch_size": 16,
        "concurrency": 1, "num_cpus": 0.5, "where": ["punsafe < 0.5"], "min_clip_score": threshold,
        "score_model": str(ckpt), "keep_scores": True}, "model": SCORE_MODEL, "text_encoding": {"tokenizer": "words"}})
    result = curate(config, str(tmp_path / "out"), log=False)
    assert result.dropped == {"where_punsafe_lt_0.5": int(unsafe.sum()), "low_clip_score": len(low)}
    assert result.rows_in == n == result.rows_out + sum(result.dropped.values())
    out = pq.read_table(sorted((tmp_path / "out").glob("*.parquet")))
    assert set(out.column("key").to_pylist()) == set(np.array(keys)[safe]) - low
    assert min(out.column("clip_score").to_pylist()) >= threshold
