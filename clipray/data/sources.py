"""Parquet sources: local directories and globs, s3:// URIs (with S3-compatible endpoints).

Everything that can fail cheaply fails here, before Ray Data starts: an unreachable endpoint,
wrong credentials, a missing prefix, a file whose schema lacks a required column.
"""

from __future__ import annotations

import contextlib
import glob
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from clipray.errors import InvalidInputError, MissingFileError, UserError

if TYPE_CHECKING:
    import pyarrow.fs
    import ray.data

# Files whose schema is checked before reading (all of them when there are at most this many).
SCHEMA_CHECK_FILES = 64


T = TypeVar("T")


class SourceError(UserError, RuntimeError):
    """The data source cannot be read; the message says which file/endpoint and why."""


class MissingColumnError(SourceError):
    pass


@dataclass(frozen=True)
class Source:
    """Resolved parquet files (sorted), their filesystem and the root that partitions hang from."""

    files: list[str]
    filesystem: pyarrow.fs.FileSystem | None
    root: str
    uri: str
    endpoint: str = ""  # of an S3 source, for error messages

    def display(self, path: str) -> str:
        return f"s3://{path}" if self.uri.startswith("s3://") else path


def s3_filesystem(endpoint_url: str | None = None, *, timeout_s: float | None = None) -> pyarrow.fs.S3FileSystem:
    """pyarrow's S3 filesystem; credentials and region come from the standard AWS chain.

    `timeout_s` makes a probe filesystem: short connect/request timeouts and a single attempt,
    so that a wrong endpoint answers in seconds instead of after minutes of retries.
    """
    from pyarrow import fs

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host.rstrip("/") or scheme, scheme=scheme if host else "https")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if timeout_s is not None:
        kwargs.update(connect_timeout=timeout_s, request_timeout=timeout_s,
                      retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=1))
    return fs.S3FileSystem(**kwargs)


def filesystem_for(path_or_uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem and path of a local path or a URI, for files clipray reads or writes
    beside the data (checkpoints, init weights): s3:// through `s3_filesystem`, so that the
    endpoint of $AWS_ENDPOINT_URL applies as it does to data.source; other schemes as pyarrow
    resolves them; a plain path on the local filesystem."""
    from pyarrow import fs

    if path_or_uri.startswith("s3://"):
        return s3_filesystem(), path_or_uri.removeprefix("s3://")
    if "://" in path_or_uri:
        return fs.FileSystem.from_uri(path_or_uri)
    return fs.LocalFileSystem(), path_or_uri


def read_bytes(path_or_uri: str) -> bytes:
    """The whole file at a local path or URI (see `filesystem_for`)."""
    filesystem, path = filesystem_for(path_or_uri)
    with filesystem.open_input_stream(path) as f:
        return f.read()


def _classify_s3_error(e: BaseException) -> str:
    text = str(e)
    if any(s in text for s in ("SignatureDoesNotMatch", "SIGNATURE_DOES_NOT_MATCH", "InvalidAccessKeyId",
                               "INVALID_ACCESS_KEY_ID", "ACCESS_DENIED", "AccessDenied",
                               "Forbidden", "HTTP status 403", "InvalidToken", "ExpiredToken")):
        return "access denied: wrong or missing credentials (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    if any(s in text for s in ("NETWORK_CONNECTION", "Couldn't connect", "curlCode", "Connection refused",
                               "Timeout", "timed out", "Could not resolve")):
        return "endpoint unreachable (check data.endpoint_url / AWS_ENDPOINT_URL and the network)"
    if "NoSuchBucket" in text or "does not exist" in text.lower():
        return "bucket does not exist"
    return "S3 request failed"


# How long the driver's pre-flight (listing, parquet footers) retries an S3 endpoint that stalls
# or restarts before the run fails (data.s3_retry_s): a 20-second stall is ridden out, an endpoint
# that never answers fails within a minute.
S3_RETRY_S = 40.0
_TRANSIENT = "endpoint unreachable"  # what _classify_s3_error says of stalls, refusals, timeouts


def _transient(e: BaseException) -> bool:
    text = str(e)
    return _classify_s3_error(e).startswith(_TRANSIENT) or any(
        s in text for s in ("SERVICE_UNAVAILABLE", "SLOW_DOWN", "INTERNAL_FAILURE", "HTTP status 5", "Broken pipe",
                            "Connection reset"))


def with_s3_retries(call: Callable[[], T], what: str, endpoint: str, retry_s: float = S3_RETRY_S) -> T:
    """`call()`, retried with exponential backoff (0.5 s doubling to 8 s) while it fails with a
    transient S3 error, for up to `retry_s`; then a SourceError naming `what` and the endpoint.
    Credentials and missing buckets fail at once."""
    start = time.monotonic()
    delay = 0.5
    while True:
        try:
            return call()
        except OSError as e:
            waited = time.monotonic() - start
            if not _transient(e) or waited + delay > retry_s:
                again = f" (retried for {waited:.0f} s)" if _transient(e) else ""
                raise SourceError(f"{what} at {endpoint}: {_classify_s3_error(e)}{again}: {e}") from None
            time.sleep(delay)
            delay = min(2 * delay, 8.0)


def endpoint_name(endpoint_url: str | None) -> str:
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or "AWS default endpoint"


def _list_s3(source: str, endpoint_url: str | None, timeout_s: float,
             retry_s: float = S3_RETRY_S) -> tuple[list[str], pyarrow.fs.FileSystem]:
    from pyarrow import fs

    path = source.removeprefix("s3://").rstrip("/")
    probe = s3_filesystem(endpoint_url, timeout_s=timeout_s)
    endpoint = endpoint_name(endpoint_url)
    # Listings with short timeouts and no retries of their own: reachability, credentials and
    # the prefix; a stalled or restarting endpoint is retried by with_s3_retries.
    infos = with_s3_retries(lambda: probe.get_file_info(fs.FileSelector(path, recursive=True, allow_not_found=True)),
                            f"data.source {source!r}", endpoint, retry_s)
    files = sorted(i.path for i in infos if i.type == fs.FileType.File and i.path.endswith(".parquet"))
    if not files:
        info = probe.get_file_info(path)
        if info.type == fs.FileType.File:
            files = [path]
    if not files:
        raise MissingFileError(f"data.source {source!r} at {endpoint}: no .parquet files under this prefix")
    return files, s3_filesystem(endpoint_url)


def _list_local(source: str) -> tuple[list[str], str]:
    if any(ch in source for ch in "*?["):
        files = sorted(os.path.abspath(p) for p in glob.glob(source, recursive=True) if os.path.isfile(p))
        if not files:
            raise MissingFileError(f"data.source {source!r} matches no files")
        root = os.path.abspath(source.split("*")[0].split("?")[0].split("[")[0])
        return files, root if os.path.isdir(root) else os.path.dirname(root)
    if not os.path.exists(source):
        raise MissingFileError(f"data.source {source!r} does not exist")
    path = os.path.abspath(source)
    if os.path.isfile(path):
        return [path], os.path.dirname(path)
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names if f.endswith(".parquet"))
    if not files:
        raise MissingFileError(f"data.source {source!r} holds no .parquet files")
    return files, path


def hive_partitions(path: str, root: str) -> dict[str, str]:
    """`k=v` directory segments of `path` below `root` (img2dataset/Spark hive layout)."""
    rel = path[len(root):].lstrip("/") if path.startswith(root) else path
    parts = rel.split("/")[:-1]
    return dict(p.split("=", 1) for p in parts if "=" in p)


def partition_matches(parts: Mapping[str, str], wanted: Mapping[str, Sequence[Any]]) -> bool:
    return all(k in parts and parts[k] in {str(v) for v in values} for k, values in wanted.items())


def resolve(source: str, endpoint_url: str | None = None, *, partition_filter: Mapping[str, Sequence[Any]] | None = None,
            timeout_s: float = 10.0, retry_s: float = S3_RETRY_S) -> Source:
    """List the parquet files of `source` (sorted), keeping only partitions in `partition_filter`."""
    if not source:
        raise InvalidInputError("data.source is empty: set it to a parquet directory, glob or s3:// URI")
    if source.startswith("s3://"):
        files, filesystem = _list_s3(source, endpoint_url, timeout_s, retry_s)
        root: str = source.removeprefix("s3://").rstrip("/")
    else:
        files, root = _list_local(source)
        filesystem = None
    if partition_filter:
        files = [f for f in files if partition_matches(hive_partitions(f, root), partition_filter)]
        if not files:
            raise MissingFileError(f"data.source {source!r}: no files in partitions {dict(partition_filter)}")
    return Source(files, filesystem, root, source, endpoint_name(endpoint_url) if filesystem is not None else "")


def check_columns(src: Source, required: Sequence[str], *, limit: int = SCHEMA_CHECK_FILES,
                  retry_s: float = S3_RETRY_S) -> None:
    """Fail fast, naming the file and the column, when a parquet schema lacks a required column.
    Footers on S3 are read with `with_s3_retries` (a stall or restart of the endpoint is retried)."""
    import pyarrow.parquet as pq

    def missing(path: str) -> tuple[str, list[str]]:
        try:
            if src.filesystem is not None:
                schema = with_s3_retries(lambda: pq.read_schema(path, filesystem=src.filesystem),
                                         f"{src.display(path)}: cannot read the parquet footer", src.endpoint, retry_s)
            else:
                schema = pq.read_schema(path)
            names = set(schema.names)
        except SourceError:
            raise
        except Exception as e:
            raise SourceError(f"{src.display(path)}: cannot read the parquet footer: {e}") from None
        return path, [c for c in required if c not in names]

    with ThreadPoolExecutor(8) as pool:
        for path, cols in pool.map(missing, src.files[:limit]):
            if cols:
                raise MissingColumnError(
                    f"{src.display(path)}: required column(s) {cols} missing (configure data.key_column / "
                    f"data.caption_column / data.image_column to match the files)"
                )


FOOTER_ACTORS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
BIN_BYTES_ENV = "RAY_DATA_PARQUET_BIN_PACKING_BYTES"
# Ray Data packs parquet row groups into read units of up to 128 MiB, and one unit is one task for
# one preprocessing actor: four 25 MB files made a single unit that left the second actor of two
# idle, twelve made three units split 7:5 between two actors. Units of 32 MiB keep every actor busy
# to the end of a chunk of files; a unit still holds at least one row group.
READ_UNIT_BYTES = 32 << 20
def read_parquet(src: Source, *, columns: list[str] | None = None, shuffle_seed: int | None = None,
                 num_cpus: float = 0.25, include_paths: bool = False) -> ray.data.Dataset:
    """A lazy dataset over `src.files`, projected to `columns`; hive partitions become columns."""
    from ray.data import FileShuffleConfig

    shuffle = FileShuffleConfig(seed=shuffle_seed) if shuffle_seed is not None else None
    # Ray Data reads parquet footers in a pool of new actors per execution (up to 32 by default),
    # each a fresh process costing about a CPU-second to start, and training builds a Dataset per
    # chunk of files: size the pool to the listing instead (one actor, 128 reads in flight, per
    # 1,000 files). Ray reads the variable while read_parquet plans; a user's own value wins.
    with (_env_default(FOOTER_ACTORS_ENV, str(min(8, 1 + len(src.files) // 1000))),
          _env_default(BIN_BYTES_ENV, str(READ_UNIT_BYTES))):
        return _read(src, columns, shuffle, num_cpus, include_paths)


@contextlib.contextmanager
def _env_default(name: str, value: str) -> Iterator[None]:
    """`name=value` in the environment for the block, unless it is set already."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _read(src: Source, columns: list[str] | None, shuffle: Any, num_cpus: float,
          include_paths: bool) -> ray.data.Dataset:
    import ray.data
    from ray.data.datasource import Partitioning, PartitionStyle

    return ray.data.read_parquet(
        src.files, filesystem=src.filesystem, columns=columns, shuffle=shuffle, num_cpus=num_cpus,
        partitioning=Partitioning(PartitionStyle.HIVE, base_dir=src.root), include_paths=include_paths,
    )
