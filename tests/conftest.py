"""Shared fixtures. Servers and clusters that tests start listen on loopback and are stopped by pid."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.support.seaweedfs import S3Server

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tables clipray builds once and keeps (CLIPPO glyphs) go to this session's temp dir, not the
    user's ~/.cache; subprocesses and Ray workers inherit the setting."""
    before = os.environ.get("CLIPRAY_CACHE_DIR")
    os.environ["CLIPRAY_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("CLIPRAY_CACHE_DIR", None)
    else:
        os.environ["CLIPRAY_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few hundred synthetic rows with a handful broken on purpose (shared, read-only)."""
    from clipray.data.synth import write_synthetic

    out = tmp_path_factory.mktemp("tiny")
    write_synthetic(out, 384, shards=3, seed=1, image_size=32, eval_per_class=2, bad_rows=6)
    return out


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp dir: Ray's unix socket paths must stay under 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="cr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def run_env(tmp_path: Path, short_tmp: Path) -> dict[str, str]:
    """Environment for a `clipray` subprocess: its own MLflow store, temp dir and Ray settings."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    env["TMPDIR"] = str(short_tmp)  # Ray puts its session (sockets, logs) here; removed after
    env["RAY_AUTH_MODE"] = "disabled"  # this test's own embedded cluster needs no token
    env.pop("RAY_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def clipray_cmd(*args: str) -> list[str]:
    exe = shutil.which("clipray", path=str(Path(sys.executable).parent))
    return [exe, *args] if exe else [sys.executable, "-m", "clipray", *args]


def run_clipray(*args: str, env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(clipray_cmd(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server on 127.0.0.1 with an access key and secret (session-wide).

    Yields `tests.support.seaweedfs.S3Server`: `.endpoint_url`, `.access_key`, `.secret_key`,
    `.region`, `.client()` (boto3), `.create_bucket(name)`, `.upload_dir(...)`, `.env()`.
    Tests use their own bucket names so they do not see each other's objects.
    """
    from tests.support.seaweedfs import SeaweedFS

    weed = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield weed.start()
    finally:
        weed.stop()


@pytest.fixture(scope="session")
def curation_data(tmp_path_factory: pytest.TempPathFactory):
    """Real clip art (Debian openclipart-png) with planted near-duplicates, copies of evaluation
    images and unsafe-flagged rows, and the labels of each (tests.support.curation_data)."""
    if not Path("/usr/share/openclipart/png").is_dir():
        pytest.skip("Debian's openclipart-png is not installed (scripts/install-system-deps.sh installs it)")
    from tests.support.curation_data import build

    return build(tmp_path_factory.mktemp("curation"))


# `make test TEST_WORKERS=N` spreads the tests over pytest-xdist workers, each taking the next test as it finishes
# one. Longest first: the runs that start Ray clusters go out first and the many quick unit tests
# fill the gaps at the end, instead of one worker finishing a long run alone.
def _cost(item: pytest.Item) -> int:
    if item.get_closest_marker("slow"):
        return 0
    return 1 if item.get_closest_marker("e2e") else 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a serial run keeps the files' own order
        items.sort(key=_cost)  # stable: files and tests keep their order within each cost


# The modules whose tests share module-scoped fixtures (a Ray head, a server, a trained run, a
# curated dataset): all of a module's tests go to one worker, so those start once. Every other
# test is a unit of its own.
ONE_WORKER_MODULES = frozenset(f"tests/e2e/{name}.py" for name in (
    "test_curate_e2e", "test_curate_memory", "test_data_sources", "test_mlflow_record_e2e", "test_retrain_e2e",
    "test_s3_faults_e2e", "test_scheduler_e2e", "test_submit_e2e",
))


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling

    class ByModuleWhereShared(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    config.option.loadscopereorder = False  # keep the longest-first order above
    return ByModuleWhereShared(config, log)
