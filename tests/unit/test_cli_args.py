"""Counts and sizes on the command line are checked by the parser, which names the option."""

from __future__ import annotations

import pytest

from clipray.cli import main


@pytest.mark.parametrize(("argv", "said"), [
    (["synth", "--out", "x", "--rows", "0"], "argument --rows: must be a positive integer, got 0"),
    (["synth", "--out", "x", "--rows", "ten"], "argument --rows: must be a positive integer, got 'ten'"),
    (["synth", "--out", "x", "--rows", "8", "--bad-rows", "-1"],
     "argument --bad-rows: must be an integer, 0 or more, got -1"),
    (["tokenizer", "train", "--source", "c.txt", "--out", "v.json", "--vocab-size", "-5"],
     "argument --vocab-size: must be a positive integer, got -5"),
    (["runs", "--limit", "0"], "argument --limit: must be a positive integer, got 0"),
    (["schedule", "add", "nightly", "p.yaml", "--cron", "61 * * * *", "--state", "s.db"],
     "argument --cron: not a valid cron expression: '61 * * * *' (five fields, e.g. '0 3 * * *')"),
])
def test_bad_count_is_refused_by_the_parser(argv, said, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"error: {said}")
    assert not any(tmp_path.iterdir())  # refused before doing anything


def test_zero_is_a_valid_count_where_it_means_none(tmp_path):
    out = tmp_path / "data"
    assert main(["synth", "--out", str(out), "--rows", "8", "--shards", "1", "--bad-rows", "0",
                 "--eval-per-class", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["eval", "train"]
