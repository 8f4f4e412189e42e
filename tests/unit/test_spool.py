"""The metric spool's delivery rules against a tracker that goes away: in order, none lost, none
twice (also when a request got through but its answer was lost), a bounded wait at close."""

from __future__ import annotations

import threading
import time

import pytest

from clipray.tracking.spool import SpoolingTracker, TrackingOutage


class Flaky:
    """Holds a metric history like MLflow's; `down` refuses calls; `lose_answer` drops one reply."""

    run_id = "r1"
    tracking_uri = "http://127.0.0.1:9"

    def __init__(self) -> None:
        self.history: list[tuple[str, int]] = []
        self.down = False
        self.lose_answer = False

    def log_metrics(self, metrics, step):
        if self.down:
            raise ConnectionError("refused")
        self.history += [(k, step) for k in metrics]
        if self.lose_answer:
            self.lose_answer = False
            raise ConnectionError("reset after the server took it")

    def logged_steps(self, key):
        if self.down:
            raise ConnectionError("refused")
        return {s for k, s in self.history if k == key}


def test_outage_then_delivery_in_order_once(tmp_path):
    inner = Flaky()
    spool = SpoolingTracker(inner, tmp_path, max_backoff_s=0.1)
    inner.down = True
    for step in range(1, 11):
        spool.log_metrics({"train/loss": 1.0 / step}, step)  # returns at once while the server is away
    assert spool.pending() == 10 and inner.history == []
    inner.lose_answer = True
    threading.Timer(0.5, setattr, (inner, "down", False)).start()
    spool.close_spool(timeout_s=30)
    assert inner.history == [("train/loss", s) for s in range(1, 11)]
    assert spool.outage_s > 0.3 and not spool.path.exists()


def test_never_back_keeps_the_file(tmp_path):
    inner = Flaky()
    inner.down = True
    spool = SpoolingTracker(inner, tmp_path, max_backoff_s=0.1)
    spool.log_metrics({"train/loss": 1.0}, 1)
    start = time.monotonic()
    with pytest.raises(TrackingOutage, match="1 metric record"):
        spool.close_spool(timeout_s=1)
    assert time.monotonic() - start < 5 and spool.path.exists()
