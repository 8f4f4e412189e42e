"""Text stages on a real local Ray cluster: CLIPPO rendering and the OpenAI BPE as Ray Data stages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from clipray.text.render import DEFAULT_FONT
from tests.conftest import ROOT, run_clipray

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(not os.path.exists(DEFAULT_FONT), reason=f"{DEFAULT_FONT} missing (apt-get install unifont)")
def test_pixels_stage_on_ray(tiny_data: Path, run_env, tmp_path: Path):
    proc = run_clipray("data", "profile", str(ROOT / "pipelines/tiny/clip-tiny.yaml"), "--json",
                       "--set", f"data.source={tiny_data / 'train'}", "--set", "text_encoding.kind=pixels",
                       env=run_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout)
    assert report["rows_in"] == 384 and report["rows_out"] == 378
