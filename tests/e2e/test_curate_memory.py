"""Near-duplicate curation of a dataset several times larger than the object store completes,
and streams: the object store never held more than a fraction of the data.

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

pytestmark = pytest.mark.e2e

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


def test_near_dedup_of_data_several_times_the_object_store_streams(tmp_path, short_tmp, monkeypatch):
    import ray

    from clipray.config import load_config
    from clipray.data.curate.run import curate

    data_bytes = _write_dataset(tmp_path / "train")
    assert data_bytes >= 3 * STORE_BYTES
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("TMPDIR", str(short_tmp))
    ray.init(num_cpus=2, object_store_memory=STORE_BYTES, include_dashboard=False,
             _temp_dir=str(short_tmp), logging_level="warning")
    try:
        config = load_config(data={"name": "mem", "data": {
            "source": str(tmp_path / "train"), "dedup": "near", "decontaminate": False, "batch_size": 16,
            "concurrency": 1, "num_cpus": 0.5, "ops": ["dedup_images", "decode"]},
            "model": {"vision": {"image_size": 32, "patch_size": 8}}})
        result = curate(config, str(tmp_path / "out"), log=False)
        spilled = _spilled_bytes()
    finally:
        ray.shutdown()
    assert result.rows_in == ROWS and result.rows_in == result.rows_out + sum(result.dropped.values())
    assert result.rows_out == 40  # one row per distinct picture
    print(f"{data_bytes / 2**20:.0f} MiB of images through an {STORE_BYTES / 2**20:.0f} MiB object store: "
          f"spilled {spilled / 2**20:.0f} MiB in {result.elapsed_s:.1f} s")
    assert spilled < data_bytes / 4
