"""The data plane on a real Ray cluster, reading from local disk and from SeaweedFS over S3."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipray.config import load_config
from clipray.data.sources import MissingColumnError, SourceError
from clipray.runtime import start_local_ray
from tests.support.corpus import CORPUS_DATA_CONFIG, write_corpus
from tests.support.seaweedfs import free_ports

pytestmark = pytest.mark.e2e

BUCKET = "clipray-data-sources"


def config(source: str, **data):
    return load_config(data={
        "name": "t",
        "data": {**CORPUS_DATA_CONFIG, "source": source, "batch_size": 16, "concurrency": 2, **data},
        "model": {"vision": {"image_size": 32, "patch_size": 8}, "text": {"context_length": 16}},
    })


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    info = write_corpus(root, shards=3, good_per_shard=30, partitioned=True)
    return root, info


@pytest.fixture(scope="module")
def ray_cluster(s3_server):
    """An in-process Ray cluster, started as `clipray train` starts one, whose workers see the S3
    server's AWS variables (the standard chain)."""
    import ray

    saved = dict(os.environ)
    tmp = tempfile.mkdtemp(prefix="crd-", dir="/tmp")
    os.environ.update(s3_server.env())
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.pop("RAY_ADDRESS", None)
    try:
        start_local_ray(num_cpus=2, include_dashboard=False, _temp_dir=tmp, logging_level="warning")
        yield ray
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(tmp, ignore_errors=True)


def collect(cfg, **kw):
    """(rows by key: (image sha1, tokens), stats snapshot) of the eval-mode pipeline."""
    import ray

    from clipray.data.pipeline import build_dataset
    from clipray.data.stats import stats_actor

    stats = stats_actor()
    ds = build_dataset(cfg, train=False, stats=stats, **kw)
    rows = {}
    for b in ds.iter_batches(batch_size=32, batch_format="numpy"):
        for i, key in enumerate(b["key"]):
            extra = tuple(str(b[c][i]) for c in cfg.data.partition_columns)
            image = hashlib.sha1(b["image"][i].tobytes()).hexdigest() if "image" in b else None
            rows[str(key)] = (image, b["tokens"][i].tolist(), extra)
    return rows, ray.get(stats.snapshot.remote())


def test_parquet_reads_keep_arrows_thread_pool(ray_cluster, corpus):
    """Ray Data's parquet read task sizes Arrow's CPU pool to 32 threads unless the worker's
    environment says otherwise; on clipray's cluster Arrow keeps its default, at most a thread per core."""
    import numpy as np
    import pyarrow as pa
    import ray.data

    root, _ = corpus
    files = sorted(str(p) for p in root.rglob("*.parquet"))

    def arrow_threads(batch):  # runs in the read task's process: the two tasks are fused
        return {"threads": np.array([pa.cpu_count()])}

    ds = ray.data.read_parquet(files, columns=["key"]).map_batches(arrow_threads, batch_format="pyarrow")
    threads = [int(row["threads"]) for row in ds.take_all()]
    assert threads and max(threads) <= (os.cpu_count() or 1), threads


def test_read_units_give_every_preprocessing_actor_work(ray_cluster, tmp_path, monkeypatch):
    """Four 20 MB files: Ray Data's own 128 MiB read units would make them one task for one actor;
    clipray's 32 MiB units make several, and a user's own setting still wins."""
    import numpy as np

    from clipray.data.sources import BIN_BYTES_ENV, read_parquet, resolve

    rng = np.random.default_rng(0)
    for i in range(4):
        blobs = [rng.bytes(100_000) for _ in range(200)]  # incompressible, like JPEG bytes
        pq.write_table(pa.table({"key": [f"{i}-{j}" for j in range(200)], "jpg": pa.array(blobs, pa.binary())}),
                       tmp_path / f"{i:05d}.parquet", row_group_size=50)
    src = resolve(str(tmp_path))

    def read_tasks() -> tuple[int, int]:
        ds = read_parquet(src, columns=["key", "jpg"]).materialize()
        return ds.num_blocks(), ds.count()

    monkeypatch.delenv(BIN_BYTES_ENV, raising=False)
    blocks, rows = read_tasks()
    assert rows == 800 and blocks >= 3, blocks
    assert BIN_BYTES_ENV not in os.environ  # set for the planning of that read only
    monkeypatch.setenv(BIN_BYTES_ENV, str(128 << 20))
    assert read_tasks() == (1, 800)


def test_local_and_s3_yield_the_same_rows_and_exact_drops(ray_cluster, s3_server, corpus):
    root, info = corpus
    s3_server.upload_dir(root, BUCKET, "laion/v1")  # boto3 writes the shards
    local_rows, local_stats = collect(config(str(root)))
    s3_rows, s3_stats = collect(config(f"s3://{BUCKET}/laion/v1"))
    assert sorted(local_rows) == info["keep"]
    assert local_rows == s3_rows
    for snap in (local_stats, s3_stats):
        assert snap["dropped"] == info["dropped"]
        assert snap["rows_in"] == info["rows"] and snap["rows_out"] == len(info["keep"])


def test_partition_filter_and_columns(ray_cluster, s3_server, corpus):
    root, _ = corpus
    s3_server.upload_dir(root, BUCKET, "parts")
    cfg = config(f"s3://{BUCKET}/parts", partition_filter={"dt": ["2026-11-20", "2026-11-22"]},
                 partition_columns=["dt"], ops=["decode", "clean_caption", "image_transform", "tokenize"])
    rows, _ = collect(cfg)
    assert {extra for _, _, extra in rows.values()} == {("2026-11-20",), ("2026-11-22",)}
    assert all(k.startswith(("s0-", "s2-", "bad-")) for k in rows) and any(k.startswith("s2-") for k in rows)


def test_explicit_files_are_read_in_order(ray_cluster, corpus):
    from clipray.data.pipeline import list_source_files

    root, _ = corpus
    cfg = config(str(root), ops=["clean_caption", "tokenize"], dedup_images=False)
    files = list_source_files(cfg)
    assert len(files) == 3 and files == sorted(files)
    rows, snap = collect(cfg, files=files[1:2])
    assert snap["rows_in"] == pq.read_metadata(files[1]).num_rows
    assert all(k.startswith(("s1-", "bad-")) for k in rows)


def test_missing_column_fails_fast_naming_file_and_column(tmp_path):
    from clipray.data.pipeline import resolve_source

    pq.write_table(pa.table({"key": ["a"], "caption": ["x"], "jpg": [b"1"]}), tmp_path / "00000.parquet")
    pq.write_table(pa.table({"key": ["b"], "TEXT": ["y"], "jpg": [b"2"]}), tmp_path / "00001.parquet")
    with pytest.raises(MissingColumnError, match=r"00001\.parquet.*'caption'"):
        resolve_source(config(str(tmp_path)))
    resolve_source(config(str(tmp_path / "00001.parquet"), caption_column="TEXT"))  # configurable names


def test_unreachable_endpoint_fails_within_a_minute(monkeypatch):
    from clipray.data.pipeline import resolve_source

    (port,) = free_ports(1)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    start = time.monotonic()
    with pytest.raises(SourceError, match="endpoint unreachable"):
        resolve_source(config("s3://bucket/prefix", endpoint_url=f"http://127.0.0.1:{port}", connect_timeout_s=3,
                              s3_retry_s=5))  # the default (40 s) would ride out a restart of the endpoint
    assert time.monotonic() - start < 60


def test_wrong_credentials_fail_within_a_minute(s3_server, monkeypatch, corpus):
    from clipray.data.pipeline import resolve_source

    root, _ = corpus
    s3_server.upload_dir(root, BUCKET, "creds")
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    resolve_source(config(f"s3://{BUCKET}/creds"))  # the right keys work
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    start = time.monotonic()
    with pytest.raises(SourceError, match="access denied: wrong or missing credentials"):
        resolve_source(config(f"s3://{BUCKET}/creds"))
    assert time.monotonic() - start < 60


def test_corpus_writer_keeps_invalid_utf8(corpus):
    root, _ = corpus
    files = sorted(Path(root).rglob("*.parquet"))
    raw = [v for f in files for v in pq.read_table(f, schema=pa.schema([("caption", pa.binary())]))["caption"]
           .to_pylist()]
    assert b"\xff\xfe caption \xc3\x28" in raw


def test_cli_reports_unreachable_endpoint_in_one_line_before_ray(run_env, tmp_path):
    from tests.conftest import ROOT, run_clipray

    (port,) = free_ports(1)
    env = {**run_env, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    start = time.monotonic()
    proc = run_clipray("data", "profile", str(ROOT / "pipelines/tiny/clip-tiny.yaml"),
                       "--set", "data.source=s3://bucket/prefix",
                       "--set", f"data.endpoint_url=http://127.0.0.1:{port}", "--set", "data.s3_retry_s=5",
                       env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and time.monotonic() - start < 60
    assert "endpoint unreachable" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("pipeline", "setting", "said"), [
    ("clip-tiny", "text_encoding.tokenizer=opena", "text_encoding.tokenizer: unknown tokenizer 'opena'. Did you mean 'openai'?"),
    ("clip-tiny", "text_encoding.tokenizer=missing/vocab.txt.gz", "text_encoding.tokenizer: tokenizer vocabulary 'missing/vocab.txt.gz'"),
    ("clippo-tiny", "text_encoding.font=/missing/unifont.hex", "text_encoding.font: font '/missing/unifont.hex' does not exist"),
])
def test_bad_op_setting_is_one_line_before_ray(run_env, tmp_path, tiny_data, pipeline, setting, said):
    """The ops are built once in the command before Ray starts: no actor tracebacks, no waiting."""
    from tests.conftest import ROOT, run_clipray

    proc = run_clipray("train", str(ROOT / f"pipelines/tiny/{pipeline}.yaml"), "--set", setting,
                       "--set", f"data.source={tiny_data / 'train'}", env=run_env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"clipray: error: {said}"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Started a local Ray instance" not in proc.stdout + proc.stderr
