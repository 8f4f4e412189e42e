"""Checkpoints under the run's storage path (local or s3://), atomic by a commit marker.

Layout: `<root>/step_00000012/state.pt` (the file format: `clipray.models.checkpoint`) then `<root>/step_00000012/COMMITTED`, written last.
Object stores have no atomic rename, so completeness is the marker, not the directory: a crash
mid-write leaves a directory without it, which `latest()` never chooses (and `prune` removes).
The newest `keep` committed checkpoints are kept.
"""

from __future__ import annotations

import json
import re
from typing import Any

from clipray.models.checkpoint import read_state, write_state
from clipray.train.faults import maybe_die

MARKER = "COMMITTED"
_DIR = re.compile(r"^step_(\d{8,})$")


def _filesystem(root: str) -> tuple[Any, str]:
    from clipray.data.sources import filesystem_for

    # Not `resolve`: that lists a prefix's parquet files, and a checkpoint root holds none.
    filesystem, path = filesystem_for(str(root))
    return filesystem, path.rstrip("/")


class CheckpointStore:
    """Save, find and prune training states under `root`."""

    def __init__(self, root: str, keep: int = 2) -> None:
        if keep <= 0:
            raise ValueError(f"train.keep_checkpoints must be positive, got {keep}")
        self.root = root
        self.keep = keep
        self.fs, self.base = _filesystem(root)

    def _steps(self, committed: bool = True) -> list[int]:
        from pyarrow import fs

        infos = self.fs.get_file_info(fs.FileSelector(self.base, allow_not_found=True))
        steps = []
        for info in infos:
            m = _DIR.match(info.base_name)
            if not m or info.type != fs.FileType.Directory:
                continue
            if committed and self.fs.get_file_info(f"{info.path}/{MARKER}").type != fs.FileType.File:
                continue
            steps.append(int(m.group(1)))
        return sorted(steps)

    def path(self, step: int) -> str:
        """The checkpoint directory of `step` on `self.fs` (no scheme: pyarrow paths)."""
        return f"{self.base}/step_{step:08d}"

    def uri(self, step: int) -> str:
        """Where the checkpoint of `step` is for other readers: `s3://...` for a store on S3."""
        return f"s3://{self.path(step)}" if self.root.startswith("s3://") else self.path(step)

    def save(self, state: dict[str, Any], step: int) -> str:
        """Write `state` for `step`, commit it, drop old ones; returns the checkpoint directory."""
        d = self.path(step)
        size = write_state(state, d, filesystem=self.fs)
        maybe_die("checkpoint_commit", step=step)  # tests: a crash between data and marker
        with self.fs.open_output_stream(f"{d}/{MARKER}") as f:
            f.write(json.dumps({"step": step, "bytes": size}).encode())
        self.prune()
        return d

    def latest(self) -> int | None:
        steps = self._steps()
        return steps[-1] if steps else None

    def load(self, step: int | None = None) -> dict[str, Any] | None:
        step = self.latest() if step is None else step
        if step is None:
            return None
        return read_state(self.uri(step), filesystem=self.fs)

    def prune(self) -> None:
        """Keep the newest `keep` committed checkpoints; remove uncommitted ones older than them."""
        committed = self._steps()
        keep = set(committed[-self.keep :])
        newest = max(keep, default=-1)
        for step in self._steps(committed=False):
            if step not in keep and step < newest:
                self.fs.delete_dir(self.path(step))
