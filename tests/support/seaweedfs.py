"""The tests' S3 server: SeaweedFS on loopback, started by `clipray.bench.s3server` (one copy,
shared with `clipray bench data`)."""

from clipray.bench.s3server import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    S3Server,
    SeaweedFS,
    free_ports,
    weed_binary,
)

__all__ = ["ACCESS_KEY", "REGION", "SECRET_KEY", "S3Server", "SeaweedFS", "free_ports", "weed_binary"]
