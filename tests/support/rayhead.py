"""A real Ray head (`ray start --head --block`) for tests of the Jobs API.

The head runs as a child in its own process group, with every port explicit on 127.0.0.1, its own
temp dir and HOME (so no token is written to the user's ~/.ray), and is stopped by killing that
process group: never `ray stop`, which would end every Ray process on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayHead:
    address: str  # http://127.0.0.1:<dashboard port>, what JobSubmissionClient takes
    gcs_address: str
    token: str | None  # None when the head runs with RAY_AUTH_MODE=disabled
    temp_dir: Path
    pid: int
    env: dict[str, str] = field(default_factory=dict)  # client environment that reaches this head

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.pop("RAY_ADDRESS", None)
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        env.pop("RAY_AUTH_MODE", None)
        env.update(self.env)
        return env


def _ray_exe() -> str:
    exe = shutil.which("ray", path=str(Path(sys.executable).parent))
    if exe is None:
        raise RuntimeError(f"no `ray` script beside {sys.executable}")
    return exe


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray head exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "/api/version", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # 401/403 from a head with token auth: the dashboard is up
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"ray head at {url} not ready after {timeout:.0f} s:\n{log.read_text()[-4000:]}")


@contextmanager
def ray_head(*, auth: bool = True, num_cpus: int = 2, timeout: float = 90) -> Iterator[RayHead]:
    """Start a head with `num_cpus` CPUs and the dashboard on a free loopback port; yield it."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))  # unix socket paths stay short
    home = temp_dir / "home"
    home.mkdir()
    token = secrets.token_hex(16) if auth else None
    env = dict(os.environ)
    for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(k, None)
    # As the README starts a head: `.venv/bin/ray start --head`, the venv not on PATH (removed even
    # when the tests run in an activated venv), so the `python` a job's shell finds has no Ray.
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep) if d and d != venv_bin)
    env.update(HOME=str(home), TMPDIR=str(temp_dir), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_AUTH_MODE="token" if auth else "disabled", RAY_USAGE_STATS_ENABLED="0")
    if token:
        env["RAY_AUTH_TOKEN"] = token
    dash = free_port()
    gcs = free_port()
    cmd = [
        _ray_exe(), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--num-cpus={num_cpus}", "--num-gpus=0",
        f"--temp-dir={temp_dir / 'ray'}", "--disable-usage-stats",
    ]
    log = temp_dir / "head.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    client = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if token else {"RAY_AUTH_MODE": "disabled"}
    try:
        _wait_ready(url, proc, log, timeout)
        yield RayHead(url, f"127.0.0.1:{gcs}", token, temp_dir, proc.pid, client)
    finally:
        _stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the head's process group (raylet, GCS, dashboard, workers), SIGKILL after a grace."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
