"""The training-state file: one name, one writer, one reader.

A checkpoint directory (local path or URI such as s3://bucket/run/checkpoints/step_00000012)
holds `state.pt`, a `torch.save` of a dict:

    {"step": int, "config": <the resolved pipeline config as a dict>,
     "objective": {"model": <model state dict>, ...momentum copies, queues},
     "optimizer": ..., "scheduler": ..., "rng": ..., "data": <data cursor>, ...}

Everything that reads or writes that file goes through `write_state` / `read_state`: the
training checkpoints (`clipray.train.checkpoint.CheckpointStore`, `LocalContext`), the logged
MLflow model (its `state.pt` holds the model entry and the masked config only) and the model
loader (`clipray.eval.loading`). It sits on the models floor so that train, eval and tracking
read it without importing each other.
"""

from __future__ import annotations

import io
from typing import Any

from clipray.errors import InvalidInputError, MissingFileError

STATE_FILE = "state.pt"


def _location(directory: str, filesystem: Any) -> tuple[Any, str]:
    """(filesystem, path on it); a given filesystem takes the path without its scheme."""
    if filesystem is not None:
        return filesystem, str(directory).split("://", 1)[-1].rstrip("/")
    from clipray.data.sources import filesystem_for

    fs, path = filesystem_for(str(directory))
    return fs, path.rstrip("/")


def write_state(state: dict[str, Any], directory: str, *, filesystem: Any = None) -> int:
    """Write `state` as `directory/state.pt`; returns the number of bytes written.

    On a local disk the file appears under its final name only when complete (written beside it,
    then renamed). Object stores have no atomic rename: there, a reader learns that a checkpoint
    is complete from its commit marker (`CheckpointStore`).
    """
    import torch
    from pyarrow import fs as pafs

    filesystem, base = _location(directory, filesystem)
    filesystem.create_dir(base, recursive=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    target = f"{base}/{STATE_FILE}"
    local = isinstance(filesystem, pafs.LocalFileSystem)
    with filesystem.open_output_stream(f"{target}.tmp" if local else target) as f:
        f.write(buf.getvalue())
    if local:
        filesystem.move(f"{target}.tmp", target)
    return buf.tell()


def has_state(directory: str, *, filesystem: Any = None) -> bool:
    from pyarrow import fs as pafs

    filesystem, base = _location(directory, filesystem)
    return bool(filesystem.get_file_info(f"{base}/{STATE_FILE}").type == pafs.FileType.File)


def read_state(directory: str, *, filesystem: Any = None) -> dict[str, Any]:
    """The state in `directory/state.pt`; a missing or unreadable file is one line naming it."""
    import torch

    filesystem, base = _location(directory, filesystem)
    path = f"{base}/{STATE_FILE}"
    where = f"{str(directory).rstrip('/')}/{STATE_FILE}"  # as the caller named it, scheme included
    try:
        with filesystem.open_input_stream(path) as f:
            data = f.read()
    except FileNotFoundError:
        raise MissingFileError(f"checkpoint {where} not found (a checkpoint directory holds {STATE_FILE})") from None
    try:
        # Not weights_only: the state holds the config, RNG states and the data cursor as well.
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as e:
        raise InvalidInputError(f"checkpoint {where} is not readable as a clipray training state "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise InvalidInputError(f"checkpoint {where} is not a clipray training state (a dict with its 'step'; "
                                f"written by another program or an older clipray)")
    return state
