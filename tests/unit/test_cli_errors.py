"""A user error is one line and exit code 2; a bug anywhere else keeps its traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import clipray.data.synth
from clipray.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_an_internal_key_error_is_not_mistaken_for_a_user_error(monkeypatch, tmp_path, capsys):
    def broken(*args, **kwargs):
        return {}["rows"]  # the kind of bug the old handler printed as "clipray: error: 'rows'"

    monkeypatch.setattr(clipray.data.synth, "write_synthetic", broken)
    with pytest.raises(KeyError, match="rows"):
        main(["synth", "--out", str(tmp_path), "--rows", "4"])
    assert "clipray: error" not in capsys.readouterr().err


def test_a_broken_internal_function_prints_its_traceback(tmp_path):
    code = ("import clipray.data.synth as s, sys\n"
            "def broken(*a, **k): raise ValueError('internal invariant broken')\n"
            "s.write_synthetic = broken\n"
            "from clipray.cli import main\n"
            f"sys.exit(main(['synth', '--out', {str(tmp_path)!r}, '--rows', '4']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "in broken" in proc.stderr and "ValueError: internal invariant broken" in proc.stderr


@pytest.mark.parametrize(("argv", "said"), [
    (["train", "no-such-pipeline.yaml"], "no-such-pipeline.yaml"),
    (["train", "pipelines/tiny/clip-tiny.yaml", "--set", "train.stepz=3"], "train.stepz"),
    (["schedule", "remove", "nightly", "--state", "{tmp}/s.db"], "no schedule 'nightly'"),
])
def test_user_errors_are_one_line(argv, said, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("clipray: error: ") and said in err[0], err
