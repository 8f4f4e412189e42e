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
def test_kubernetes_rendering(kind: str, tmp_path: Path):
    s = Schedule("nightly", "0 3 * * *", str(ROOT / "pipelines/demo.yaml"), ["train.steps=100"], max_retries=2)
    cm, doc = yaml.safe_load_all(render(s, kind))
    assert doc["kind"] == kind and doc["spec"]["schedule"] == "0 3 * * *"
    if kind == "RayCronJob":
        assert doc["apiVersion"] == "ray.io/v1"
        job = doc["spec"]["jobTemplate"]
    else:
        env = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"][0]
        rayjob = yaml.safe_load(env["value"])
        assert rayjob["kind"] == "RayJob" and rayjob["metadata"]["generateName"] == "clipray-nightly-"
        job = rayjob["spec"]
    # The pipeline travels as a ConfigMap with the overrides applied, mounted where the entrypoint reads it.
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "clipray-nightly-pipeline"
    shipped = yaml.safe_load(cm["data"]["pipeline.yaml"])
    assert shipped["train"]["steps"] == 100 and shipped["name"] == load_config(ROOT / "pipelines/demo.yaml").name
    (tmp_path / "pipeline.yaml").write_text(cm["data"]["pipeline.yaml"])
    assert load_config(tmp_path / "pipeline.yaml").train.steps == 100  # the shipped file is a valid pipeline
    assert job["entrypoint"].startswith("python -m clipray retrain /etc/clipray/pipeline.yaml --schedule nightly ")
    assert str(ROOT) not in yaml.safe_dump(doc)  # nothing of the rendering machine's layout
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volume = next(v for v in head["volumes"] if v.get("configMap", {}).get("name") == "clipray-nightly-pipeline")
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    assert mount["mountPath"] == "/etc/clipray"
    assert job["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    assert {g["groupName"] for g in job["rayClusterSpec"]["workerGroupSpecs"]} == {"cpu-data", "gpu-train"}
    json.dumps(doc)  # plain data, no YAML-only types


def test_render_warns_about_paths_the_pods_cannot_see(tmp_path, capsys, monkeypatch):
    from clipray.cli import main

    monkeypatch.chdir(tmp_path)
    state = str(tmp_path / "sched.db")
    pipeline = str(ROOT / "pipelines/demo.yaml")
    assert main(["schedule", "add", "local", pipeline, "--cron", "0 3 * * *", "--state", state,
                 "--set", "data.source=data/web", "--set", "tracking.tracking_uri=sqlite:///runs.db"]) == 0
    assert main(["schedule", "add", "remote", pipeline, "--cron", "0 3 * * *", "--state", state,
                 "--set", "data.source=s3://bucket/web", "--set", "eval.zeroshot_source=s3://bucket/eval",
                 "--set", "train.storage_path=s3://bucket/runs"]) == 0
    capsys.readouterr()
    assert main(["schedule", "render", "local", "--state", state]) == 0
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("clipray: warning: ")]
    assert [w.split()[2] for w in warnings] == ["data.source", "eval.zeroshot_source", "train.storage_path",
                                             "tracking.tracking_uri"], err
    assert len(list(yaml.safe_load_all(out))) == 2  # the YAML is still printed, on stdout only
    assert main(["schedule", "render", "remote", "--state", state]) == 0
    assert capsys.readouterr().err == ""


def test_unknown_schedule_is_one_unquoted_line(tmp_path, capsys):
    from clipray.cli import main

    state = tmp_path / "sched.db"
    assert main(["schedule", "remove", "nightly", "--state", str(state)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"clipray: error: no schedule 'nightly' in {state}", err
