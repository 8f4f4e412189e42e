"""Fault injection for recovery tests: `CLIPRAY_FAULT` names points where a process dies.

Format: `point[@step][:rank=R][:once=/marker/file][:hold=/gate/file]`, several separated by `,`;
e.g. `step@6:rank=1:once=/tmp/x` kills rank 1 (SIGKILL, as a lost node would) when step 6 ends,
once; `step@40:hold=/tmp/gate` instead waits at the end of step 40 for as long as /tmp/gate exists
(so that a test can change the cluster under a run that has not finished yet).
`nonfinite@S[:rank=R][:once=...]` kills nothing: it makes step S's loss (and so its gradients)
non-finite on rank R (every rank without `rank=`); see `clipray.train.guard`.
Unset (the default) costs one dictionary lookup per call.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "CLIPRAY_FAULT"


def _selected(point: str, step: int | None, rank: int) -> list[dict[str, str]]:
    """The options of every `CLIPRAY_FAULT` item that selects (point, step, rank)."""
    spec = os.environ.get(ENV)
    if not spec:
        return []
    out = []
    for item in spec.split(","):
        name, *opts = item.split(":")
        where, _, at = name.partition("@")
        if where != point or (at and step != int(at)):
            continue
        options = dict(o.split("=", 1) for o in opts)
        if "rank" in options and int(options["rank"]) != rank:
            continue
        out.append(options)
    return out


def _first_time(options: dict[str, str], point: str, step: int | None, rank: int) -> bool:
    """False when the item's `once` marker exists; else writes it (if any) and returns True."""
    marker = options.get("once")
    if marker:
        if Path(marker).exists():
            return False
        Path(marker).write_text(f"{point}@{step} rank {rank} pid {os.getpid()}\n")
    return True


def maybe_die(point: str, *, step: int | None = None, rank: int = 0) -> None:
    """SIGKILL this process if `CLIPRAY_FAULT` selects (point, step, rank)."""
    for options in _selected(point, step, rank):
        if "hold" in options:
            while Path(options["hold"]).exists():
                time.sleep(0.2)
            continue
        if _first_time(options, point, step, rank):
            os.kill(os.getpid(), signal.SIGKILL)


def fault_at(point: str, *, step: int, rank: int = 0) -> bool:
    """True if `CLIPRAY_FAULT` selects a non-lethal fault `point` at (step, rank)."""
    return any([_first_time(o, point, step, rank) for o in _selected(point, step, rank)])
