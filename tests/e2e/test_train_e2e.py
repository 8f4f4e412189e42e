"""`clipray data profile` on Ray and a bad config failing before Ray starts. The tiny pipeline's full
training run and its MLflow record are checked in test_mlflow_record_e2e.py (one run serves both)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_clipray

pytestmark = pytest.mark.e2e

# A warning- or error-level line: Python logging's level names (Ray's and clipray's loggers, the
# raylet's forwarded "WARNING:" lines), Python warnings, and glog lines of Ray's C++ core
# ("[2026-12-07 22:50:40,783 E 12760 12817] core_worker.cc:...").
ALARMING = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|\w+Warning: |\d\d:\d\d:\d\d,\d{3} [EWF] \d+ \d+\]")


def alarming_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if ALARMING.search(line)]


def test_data_profile_json_counts_every_row(tiny_data: Path, run_env, tmp_path: Path):
    proc = run_clipray("data", "profile", str(ROOT / "pipelines/tiny/clip-tiny.yaml"), "--json",
                       "--set", f"data.source={tiny_data / 'train'}", env=run_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout)  # stdout holds the JSON object alone
    assert report["rows_in"] == 384
    assert report["dropped"] == {"decode_error": 2, "empty_caption": 2, "null_image": 2}
    assert report["rows_in"] == report["rows_out"] + sum(report["dropped"].values())
    assert report["rows_per_s"] > 0 and report["stage_rows_per_s"] > 0


def test_unknown_key_fails_before_ray_starts(run_env, tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "pipelines/tiny/clip-tiny.yaml").read_text() + "\nbogus_section: {a: 1}\n")
    proc = run_clipray("train", str(bad), env=run_env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert "unknown key 'bogus_section'" in proc.stderr
    assert "Ray" not in proc.stderr and not (tmp_path / "mlflow.db").exists()
