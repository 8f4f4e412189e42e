"""Fault injection for recovery tests: `CLIPRAY_FAULT` names points where a process dies.

Format: `point[@step][:rank=R][:once=/marker/file][:hold=/gate/file]`, several separated by `,`;
e.g. `step@6:rank=1:once=/tmp/x` kills rank 1 (SIGKILL, as a lost node would) when step 6 ends,
once; `step@40:hold=/tmp/gate` instead waits at the end of step 40 for as long as /tmp/gate exists
(so that a test can change the cluster under a run that has not finished yet).
Unset (the default) costs one dictionary lookup per call.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "CLIPRAY_FAULT"


def maybe_die(point: str, *, step: int | None = None, rank: int = 0) -> None:
    """SIGKILL this process if `CLIPRAY_FAULT` selects (point, step, rank)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for item in spec.split(","):
        name, *opts = item.split(":")
        where, _, at = name.partition("@")
        if where != point or (at and step != int(at)):
            continue
        options = dict(o.split("=", 1) for o in opts)
        if "rank" in options and int(options["rank"]) != rank:
            continue
        if "hold" in options:
            while Path(options["hold"]).exists():
                time.sleep(0.2)
            continue
        marker = options.get("once")
        if marker:
            if Path(marker).exists():
                continue
            Path(marker).write_text(f"{point}@{step} rank {rank} pid {os.getpid()}\n")
        os.kill(os.getpid(), signal.SIGKILL)
