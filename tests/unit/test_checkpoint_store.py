"""CheckpointStore: a write killed before its commit marker is never chosen; the newest K are kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import torch

from clipray.models.checkpoint import STATE_FILE as STATE
from clipray.train.checkpoint import MARKER, CheckpointStore

WRITER = """
import sys, torch
from clipray.train.checkpoint import CheckpointStore
store = CheckpointStore(sys.argv[1], keep=2)
for step in (3, 6):
    store.save({"step": step, "weights": torch.full((256, 256), float(step))}, step)
"""


def test_interrupted_write_is_never_chosen(tmp_path):
    root = str(tmp_path / "ckpt")
    env = dict(os.environ, CLIPRAY_FAULT="checkpoint_commit@6")  # SIGKILL after step 6's data, before its marker
    proc = subprocess.run([sys.executable, "-c", WRITER, root], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    partial = tmp_path / "ckpt" / "step_00000006"
    assert (partial / STATE).exists() and not (partial / MARKER).exists()  # the crash left a full-looking file
    store = CheckpointStore(root, keep=2)
    assert store.latest() == 3
    state = store.load()
    assert state["step"] == 3 and torch.equal(state["weights"], torch.full((256, 256), 3.0))

    # The resumed run writes step 6 again over the partial directory, and it becomes the latest.
    store.save({"step": 6}, 6)
    assert store.latest() == 6 and store.load()["step"] == 6


def test_keeps_the_newest_k_and_drops_stale_partials(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=2)
    (tmp_path / "step_00000001").mkdir()  # an interrupted write older than what follows
    for step in (2, 4, 6):
        store.save({"step": step}, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004", "step_00000006"]
    assert store.load(4)["step"] == 4


def test_store_on_s3(s3_server, monkeypatch):
    # Run storage on an object store (train.storage_path: s3://...): save, find, load and prune
    # through the S3 API, the endpoint and keys taken from the standard AWS variables.
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.create_bucket("checkpoint-store")
    store = CheckpointStore(f"s3://{bucket}/run/checkpoints", keep=1)
    for step in (2, 4):
        store.save({"step": step, "weights": torch.full((4,), float(step))}, step)
    assert store.latest() == 4
    state = store.load()
    assert state["step"] == 4 and torch.equal(state["weights"], torch.full((4,), 4.0))
    # keep=1: step 2 is pruned (pyarrow also writes "directory/" marker objects; files only here)
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert {k for k in keys if not k.endswith("/")} == {f"run/checkpoints/step_00000004/{STATE}",
                                                         f"run/checkpoints/step_00000004/{MARKER}"}
