"""`clipray runs`: recent MLflow runs with their key metrics and where to open each.

A driver that dies without a word (SIGKILL, a lost head pod, a laptop put to sleep) leaves its
run RUNNING for ever. So the driver of `clipray train` refreshes the tag `clipray.heartbeat`
(Unix seconds) every HEARTBEAT_S while it runs; a RUNNING run whose heartbeat is older than
STALE_S is shown as `RUNNING (stale: driver lost?)`, to be continued with `--resume RUN_ID`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from clipray.errors import UnknownNameError

KEY_METRICS = ("train/loss", "eval/zeroshot_top1", "train/samples_per_s", "data/rows_out")
HEARTBEAT_TAG = "clipray.heartbeat"
HEARTBEAT_S = 30.0
STALE_S = 4 * HEARTBEAT_S  # a few missed beats: a busy or briefly unreachable server is not a lost driver


class Heartbeat:
    """Sets the heartbeat tag now and then every `interval_s` from a daemon thread until `stop`."""

    def __init__(self, tracker: Any, interval_s: float = HEARTBEAT_S) -> None:
        self.tracker = tracker
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._run, name="clipray-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        with contextlib.suppress(Exception):  # an unreachable server must not stop training
            self.tracker.set_tags({HEARTBEAT_TAG: str(int(time.time()))})

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._beat()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def heartbeat(tracker: Any, interval_s: float = HEARTBEAT_S) -> Heartbeat:
    return Heartbeat(tracker, interval_s)


def shown_status(status: str, tags: dict[str, str], now: float | None = None) -> str:
    """The run's status, `RUNNING (stale: driver lost?)` when its heartbeat stopped."""
    beat = tags.get(HEARTBEAT_TAG)
    if status == "RUNNING" and beat is not None and beat.isdigit():
        age = (time.time() if now is None else now) - int(beat)
        if age > STALE_S:
            return "RUNNING (stale: driver lost?)"
    return status


def ui_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A browser link for http(s) tracking servers; for local stores the `mlflow ui` command + link."""
    path = f"/#/experiments/{experiment_id}/runs/{run_id}"
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/") + path
    return f"mlflow ui --backend-store-uri {tracking_uri}  ->  http://127.0.0.1:5000{path}"


def recent_runs(tracking_uri: str, experiment: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise UnknownNameError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=limit) if ids else []
    out = []
    for r in runs:
        out.append({
            "run_id": r.info.run_id, "name": r.info.run_name, "status": shown_status(r.info.status, r.data.tags),
            "experiment_id": r.info.experiment_id, "start": r.info.start_time,
            "pipeline": r.data.tags.get("clipray.pipeline", "-"),
            "metrics": {k: r.data.metrics[k] for k in KEY_METRICS if k in r.data.metrics},
            "link": ui_link(tracking_uri, r.info.experiment_id, r.info.run_id),
        })
    return out


def format_runs(runs: list[dict[str, Any]]) -> str:
    lines = []
    for r in runs:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["start"] / 1000)) if r["start"] else "-"
        metrics = "  ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in r["metrics"].items()) or "no metrics"
        lines.append(f"{r['run_id'][:12]}  {started}  {r['status']:9} {r['pipeline']:16} {metrics}")
        lines.append(f"    {r['link']}")
    return "\n".join(lines) if lines else "no runs"
