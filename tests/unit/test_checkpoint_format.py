"""The training-state file (`clipray.models.checkpoint`): one writer, one reader, one name, and
one-line errors for a checkpoint that is missing or unreadable."""

from __future__ import annotations

import torch

from clipray.cli import main
from clipray.models.checkpoint import STATE_FILE, has_state, read_state, write_state
from clipray.train.checkpoint import CheckpointStore
from clipray.train.context import LocalContext


def test_every_writer_writes_the_one_file_the_reader_reads(tmp_path):
    state = {"step": 3, "objective": {"model": {"w": torch.arange(4.0)}}, "config": {"name": "x"}}
    size = write_state(state, str(tmp_path / "plain"))
    assert size == (tmp_path / "plain" / STATE_FILE).stat().st_size
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == [STATE_FILE]  # no temporary left behind
    assert torch.equal(read_state(str(tmp_path / "plain"))["objective"]["model"]["w"], torch.arange(4.0))

    store = CheckpointStore(str(tmp_path / "store"))
    directory = store.save(state, 3)
    assert has_state(directory) and read_state(directory)["step"] == 3 and store.load()["step"] == 3

    ctx = LocalContext(lambda epoch: [], checkpoint_dir=str(tmp_path / "local"))
    assert ctx.latest_state() is None
    ctx.report({}, state)
    assert has_state(str(tmp_path / "local")) and ctx.latest_state()["step"] == 3


def test_missing_or_unreadable_checkpoints_are_one_line_naming_the_file(tmp_path, capsys):
    import pytest

    from clipray.errors import InvalidInputError, MissingFileError

    with pytest.raises(MissingFileError, match=f"checkpoint {tmp_path / STATE_FILE} not found"):
        read_state(str(tmp_path))
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / STATE_FILE).write_bytes(b"not a torch file")
    with pytest.raises(InvalidInputError, match=f"checkpoint {tmp_path / 'garbage' / STATE_FILE} is not readable"):
        read_state(str(tmp_path / "garbage"))
    (tmp_path / "foreign").mkdir()
    torch.save({"state_dict": {}}, tmp_path / "foreign" / STATE_FILE)  # another program's file, same name
    with pytest.raises(InvalidInputError, match="is not a clipray training state"):
        read_state(str(tmp_path / "foreign"))

    # Through the CLI: exit 2 and one line that names the file.
    assert main(["export", str(tmp_path / "garbage"), "--format", "open_clip", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "garbage" / STATE_FILE) in err, err


def test_init_from_reads_a_clipray_checkpoint_with_the_same_reader(tmp_path):
    from clipray.models.clip.state_dict_adapter import read_state_dict

    weights = {"w": torch.arange(3.0)}
    write_state({"step": 1, "objective": {"model": weights}}, str(tmp_path))
    for ref in (str(tmp_path), str(tmp_path / STATE_FILE)):  # model.init_from: the directory or its state.pt
        assert torch.equal(read_state_dict(ref)["w"], weights["w"])
