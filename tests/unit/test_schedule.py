"""Schedules in SQLite survive a restart; cron validation; partition listing/selection; k8s YAML."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from clipray.config import load_config
from clipray.schedule.k8s import render
from clipray.schedule.retrain import list_partitions, select_partitions
from clipray.schedule.service import submission_id, window_id
from clipray.schedule.store import Schedule, ScheduleStore
from tests.conftest import ROOT

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc).timestamp()


def test_schedule_survives_reopen_and_windows_are_claimed_once(tmp_path: Path):
    db = tmp_path / "s.db"
    store = ScheduleStore(db)
    s = store.add(Schedule("nightly", "0 3 * * *", "p.yaml", ["train.steps=5"], "http://h:8265"), now=T0)
    assert window_id(s.next_due) == "20261123T0300"
    store.claim_window(s, "20261123T0300", submission_id("nightly", "20261123T0300", 0), s.next_due + 86400)
    store.close()  # the process dies here

    again = ScheduleStore(db)
    (back,) = again.schedules()
    assert (back.name, back.cron, back.overrides, back.address) == ("nightly", "0 3 * * *", ["train.steps=5"],
                                                                      "http://h:8265")
    assert window_id(back.next_due) == "20261124T0300"
    (sub,) = again.submissions(statuses=("pending",))
    assert sub.submission_id == "clipray-nightly-20261123T0300-a0"  # resent after restart, same id
    again.claim_window(back, "20261123T0300", sub.submission_id, back.next_due)  # a repeat is a no-op
    assert len(again.submissions()) == 1
    again.add_retry(sub, submission_id("nightly", sub.window, 1))
    assert [(x.attempt, x.status) for x in again.submissions()] == [(0, "retried"), (1, "pending")]
    with pytest.raises(ValueError, match="exists"):
        again.add(Schedule("nightly", "0 3 * * *", "p.yaml"))
    assert again.remove("nightly") and not again.schedules()


def test_bad_cron_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="not a valid cron expression"):
        ScheduleStore(tmp_path / "s.db").add(Schedule("x", "every night", "p.yaml"))


def test_partitions_listed_and_selected(tmp_path: Path):
    for d in ["dt=2026-11-01", "dt=2026-11-02", "other"]:
        (tmp_path / d).mkdir()
    assert list_partitions(str(tmp_path), "dt") == ["2026-11-01", "2026-11-02"]
    config = load_config(ROOT / "pipelines/tiny/clip-tiny.yaml", [f"data.source={tmp_path}"])
    one = select_partitions(config, "dt", ["2026-11-02"], ["2026-11-01", "2026-11-02"])
    if hasattr(one.data, "partition_filter"):
        assert one.data.partition_filter == {"dt": ["2026-11-02"]}
    else:
        assert one.data.source == f"{tmp_path}/dt=2026-11-02"
    every = select_partitions(config, "dt", ["2026-11-01", "2026-11-02"], ["2026-11-01", "2026-11-02"])
    assert every.data.source == str(tmp_path)


@pytest.mark.parametrize("kind", ["RayCronJob", "CronJob"])
def test_kubernetes_rendering(kind: str):
    s = Schedule("nightly", "0 3 * * *", "pipelines/demo.yaml", ["train.steps=100"], max_retries=2)
    doc = yaml.safe_load(render(s, kind))
    assert doc["kind"] == kind and doc["spec"]["schedule"] == "0 3 * * *"
    if kind == "RayCronJob":
        assert doc["apiVersion"] == "ray.io/v1"
        job = doc["spec"]["jobTemplate"]
    else:
        env = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"][0]
        rayjob = yaml.safe_load(env["value"])
        assert rayjob["kind"] == "RayJob" and rayjob["metadata"]["generateName"] == "clipray-nightly-"
        job = rayjob["spec"]
    assert "python -m clipray retrain pipelines/demo.yaml --set train.steps=100 --schedule nightly" in job["entrypoint"]
    assert job["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    assert {g["groupName"] for g in job["rayClusterSpec"]["workerGroupSpecs"]} == {"cpu-data", "gpu-train"}
    json.dumps(doc)  # plain data, no YAML-only types


def test_unknown_schedule_is_one_unquoted_line(tmp_path, capsys):
    from clipray.cli import main

    state = tmp_path / "sched.db"
    assert main(["schedule", "remove", "nightly", "--state", str(state)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"clipray: error: no schedule 'nightly' in {state}", err
