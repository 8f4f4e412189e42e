"""Stopping every process of a test's own Ray instance, as a lost machine would."""

from __future__ import annotations

import os
import signal
import time
from contextlib import suppress
from pathlib import Path


def pids_with_env(name: str, value: str) -> list[int]:
    """Processes of this user whose environment has `name=value` (e.g. a test's own TMPDIR)."""
    wanted = f"{name}={value}".encode()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with suppress(OSError):
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                out.append(int(entry.name))
    return out


def kill_all_with_env(name: str, value: str, timeout: float = 30) -> int:
    """SIGKILL every process whose environment has `name=value` until none is left; how many."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = pids_with_env(name, value)
        if not pids:
            return len(killed)
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.2)
    raise TimeoutError(f"processes with {name}={value} still alive: {pids_with_env(name, value)}")
