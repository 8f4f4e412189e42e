"""A real `mlflow server` goes away mid-run: per-step metrics go through the on-disk spool
(`clipray.tracking.spool`), training is not held up, and every step reaches the run exactly once
when the server is back on the same port and store. A server that does not come back in time ends
with `TrackingOutage` naming the spool file, which `clipray runs --flush DIR` delivers later.

The training is the real loop in one process (LocalContext); MLflow's own client retries are
turned off (`MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`) so that the outage (OUTAGE_S) is longer than
the client's retry budget: only the spool carries the records across it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from clipray.config import load_config
from clipray.tracking import MlflowTracker, start_run
from clipray.tracking.spool import SpoolingTracker, TrackingOutage
from clipray.train.context import LocalContext
from clipray.train.loop import train_loop
from tests.conftest import run_clipray
from tests.support.mlflowserver import MlflowServer
from tests.unit.test_loop_local import TINY, batches_from

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STEPS, DOWN_AT, OUTAGE_S = 24, 4, 60.0  # a minute down, as real outages last


@pytest.fixture
def server(s3_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")  # a loaded machine answers slowly; a stopped server refuses at once
    bucket = s3_server.create_bucket("mlflow-outage")
    root = tmp_path / "mlflow"
    root.mkdir()
    srv = MlflowServer(root, artifacts=f"s3://{bucket}/", env=s3_server.env())
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


class GoesDown(LocalContext):
    """Stops the server when step DOWN_AT's batch is drawn; `up_after` seconds later starts it again."""

    def __init__(self, batches, server: MlflowServer, up_after: float | None) -> None:
        super().__init__(batches)
        self.server, self.up_after = server, up_after
        self.restarted = threading.Event()
        self.drawn = 0  # batches drawn so far
        self.drawn_when_back: int | None = None

    def batches(self, epoch):
        for i, b in enumerate(super().batches(epoch)):
            self.drawn += 1
            if i == DOWN_AT:
                self.server.stop()
                if self.up_after is not None:
                    threading.Timer(self.up_after, self._up).start()
            yield b

    def _up(self) -> None:
        self.drawn_when_back = self.drawn  # how far training got while the server was away
        self.server.start()
        self.restarted.set()


def _steps(url: str, run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(url).get_metric_history(run_id, "train/loss"))


def test_outage_longer_than_the_client_retries_loses_nothing(server: MlflowServer, tiny_data: Path, tmp_path: Path):
    cfg = load_config(data=TINY, overrides=[f"train.steps={STEPS}", "train.checkpoint_every=1000"])
    run_id = start_run("outage", server.url).run_id
    spool = SpoolingTracker(MlflowTracker(server.url, run_id), tmp_path / "spool", max_backoff_s=2)
    ctx = GoesDown(batches_from(tiny_data, cfg), server, up_after=OUTAGE_S)
    train_loop(cfg, ctx, spool)
    spool.close_spool(timeout_s=900)  # `mlflow server` takes seconds to start again, minutes on a loaded machine
    assert ctx.restarted.is_set() and spool.outage_s >= OUTAGE_S / 2, spool.outage_s
    # Training was not held up: it went on drawing batches while the server was away.
    assert ctx.drawn_when_back is not None and ctx.drawn_when_back >= DOWN_AT + 4, ctx.drawn_when_back
    assert _steps(server.url, run_id) == list(range(1, STEPS + 1))  # all delivered, none twice
    assert not spool.path.exists()


def test_server_that_never_returns_then_flush(server: MlflowServer, tiny_data: Path, tmp_path: Path, run_env):
    cfg = load_config(data=TINY, overrides=["train.steps=8", "train.checkpoint_every=1000"])
    run_id = start_run("outage", server.url).run_id
    spool = SpoolingTracker(MlflowTracker(server.url, run_id), tmp_path / "spool", max_backoff_s=1)
    train_loop(cfg, GoesDown(batches_from(tiny_data, cfg), server, up_after=None), spool)
    with pytest.raises(TrackingOutage, match=r"within 3 s after training; they are in .*clipray runs --flush"):
        spool.close_spool(timeout_s=3)
    assert spool.path.exists()
    held = _steps_when_up(server, run_id)
    assert held == list(range(1, len(held) + 1)) and len(held) <= DOWN_AT, held  # what got through before
    proc = run_clipray("runs", "--flush", str(tmp_path / "spool"), env=run_env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "delivered" in proc.stdout, proc.stderr[-3000:]
    assert _steps(server.url, run_id) == list(range(1, 9))  # the rest, none twice
    assert not spool.path.exists()


def _steps_when_up(server: MlflowServer, run_id: str) -> list[int]:
    server.start()
    return _steps(server.url, run_id)
