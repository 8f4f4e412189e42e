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


@contextmanager
def mlflow_server(root: Path, *, artifacts: str, env: dict[str, str], timeout: float = 300) -> Iterator[str]:
    """Run `mlflow server`; yield its URL. `artifacts`: s3://bucket/prefix, `env`: its S3 settings."""
    port = free_port()
    server_env = {**os.environ, **env, "MLFLOW_S3_ENDPOINT_URL": env["AWS_ENDPOINT_URL"]}
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", artifacts,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = root / "mlflow-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=server_env, stdout=out, stderr=subprocess.STDOUT, cwd=root,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mlflow server not ready:\n{log.read_text()[-4000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
