"""The driver's S3 pre-flight (listing, parquet footers) against a SeaweedFS server of its own
that stalls (SIGSTOP for 20 s, then SIGCONT) or restarts (down 5 s, same ports and data): every
file is found, none twice, and the footers are read; a server that never answers fails within
data.s3_retry_s with an error naming the object and the endpoint."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from clipray.data.sources import SourceError
from tests.e2e.test_data_sources import config
from tests.support.corpus import write_corpus
from tests.support.seaweedfs import SeaweedFS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
BUCKET = "clipray-s3-faults"
STALL_S = 20.0


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = SeaweedFS(tmp_path_factory.mktemp("weed-faults"))
    s3 = server.start()
    s3.create_bucket(BUCKET)
    root = tmp_path_factory.mktemp("faults-corpus")
    write_corpus(root, shards=3, good_per_shard=10, partitioned=False)
    server.keys = s3.upload_dir(root, BUCKET, "data")  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(weed: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> None:
    assert weed.server is not None
    for k, v in weed.server.env().items():
        monkeypatch.setenv(k, v)


def _expected(weed: SeaweedFS) -> list[str]:
    return sorted(f"{BUCKET}/{k}" for k in weed.keys if k.endswith(".parquet"))  # type: ignore[attr-defined]


def test_preflight_rides_out_a_20_second_stall(weed: SeaweedFS, s3_env: None):
    from clipray.data.pipeline import resolve_source

    weed.pause()
    timer = threading.Timer(STALL_S, weed.resume)
    timer.start()
    start = time.monotonic()
    try:
        src = resolve_source(config(f"s3://{BUCKET}/data", connect_timeout_s=3))
    finally:
        timer.join()
    assert time.monotonic() - start >= STALL_S - 1  # it really waited for the stall
    assert src.files == _expected(weed) and len(src.files) >= 3


def test_preflight_rides_out_a_restart(weed: SeaweedFS, s3_env: None):
    from clipray.data.pipeline import resolve_source

    restarted = threading.Thread(target=weed.restart, kwargs={"down_s": 5.0})
    restarted.start()
    time.sleep(0.5)  # the server is going down or down
    try:
        # The server needs a few seconds to start again on a loaded machine: a longer retry budget.
        src = resolve_source(config(f"s3://{BUCKET}/data", connect_timeout_s=3, s3_retry_s=120))
    finally:
        restarted.join()
    assert src.files == _expected(weed)


def test_a_server_that_never_answers_fails_naming_object_and_endpoint(weed: SeaweedFS, s3_env: None):
    from clipray.data.pipeline import resolve_source

    assert weed.server is not None
    weed.pause()
    start = time.monotonic()
    try:
        with pytest.raises(SourceError) as err:
            resolve_source(config(f"s3://{BUCKET}/data", connect_timeout_s=2, s3_retry_s=8))
    finally:
        weed.resume()
    assert time.monotonic() - start < 8 + 2 * 2 + 5
    message = str(err.value)
    assert f"s3://{BUCKET}/data" in message and weed.server.endpoint_url in message and "retried for" in message

