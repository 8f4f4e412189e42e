"""A real `mlflow server` for tests: SQLite backend store, artifacts proxied to an S3 bucket.

Listens on a free loopback port, keeps its database in a folder of its own and is stopped by its
own process group (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tests.support.rayhead import free_port


class MlflowServer:
    """One `mlflow server` that can be stopped and started again on the same port and store."""

    def __init__(self, root: Path, *, artifacts: str, env: dict[str, str], timeout: float = 300) -> None:
        self.root, self.artifacts, self.timeout = root, artifacts, timeout
        self.env = {**os.environ, **env, "MLFLOW_S3_ENDPOINT_URL": env["AWS_ENDPOINT_URL"]}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        cmd = [str(Path(sys.executable).parent / "mlflow"), "server",
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination", self.artifacts,
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        log = self.root / "mlflow-server.log"
        with open(log, "ab") as out:
            proc = self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return self.url
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mlflow server not ready:\n{log.read_text()[-4000:]}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def mlflow_server(root: Path, *, artifacts: str, env: dict[str, str], timeout: float = 300) -> Iterator[str]:
    """Run `mlflow server`; yield its URL. `artifacts`: s3://bucket/prefix, `env`: its S3 settings."""
    server = MlflowServer(root, artifacts=artifacts, env=env, timeout=timeout)
    try:
        yield server.start()
    finally:
        server.stop()
