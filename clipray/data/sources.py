"""Parquet sources: local directories and globs, s3:// URIs (with S3-compatible endpoints).

Everything that can fail cheaply fails here, before Ray Data starts: an unreachable endpoint,
wrong credentials, a missing prefix, a file whose schema lacks a required column.
"""

from __future__ import annotations

import contextlib
import glob
import os
import sys
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
READER_CPU_ENV = "RAY_DATA_PARQUET_READER_CPU_COUNT"
BIN_BYTES_ENV = "RAY_DATA_PARQUET_BIN_PACKING_BYTES"
PROGRESS_BARS_OFF_ENV = "RAY_DATA_DISABLE_PROGRESS_BARS"
# Ray Data packs parquet row groups into read units of up to 128 MiB, and one unit is one task for
# one preprocessing actor: four 25 MB files made a single unit that left the second actor of two
# idle, twelve made three units split 7:5 between two actors. Units of 32 MiB keep every actor busy
# to the end of a chunk of files; a unit still holds at least one row group.
READ_UNIT_BYTES = 32 << 20
# What clipray puts in the environment of its Ray workers. Ray Data's parquet read task resizes
# Arrow's process-wide CPU pool to 32 threads by default, whatever the node's core count; on 2
# cores those threads spent 3.8 CPU-s reading 6,000 web rows (284 MB) where Arrow's own default,
# one thread per core (the value 0 keeps it), spent 1.1. Ray reads the variable when a worker
# imports its parquet reader, so it must be in the worker's environment from the start.
# Ray Data warns (a UserWarning, once per dataset execution) when a fixed actor pool gets fewer
# input blocks than it has actors: a chunk of one small file makes one read unit. clipray sizes
# its pools on purpose (clipray.data.pipeline: a fixed pool, not an autoscaling one), and an
# idle actor on a small chunk needs no action from the user. Python matches the start of the
# message; the executor runs in a Ray worker (the streaming_split coordinator), hence the
# environment variable, and in the driver for `clipray eval`/`embed` (quiet_known_warnings).
MIN_ACTORS_WARNING = "The minimum number of concurrent actors"
# DDP warns (once per worker) when a gradient's strides differ from its bucket view's. CPU 1x1
# convolutions (CLIP's ResNet tower) return weight gradients whose strides differ only in
# dimensions of size 1: the same memory layout, so nothing is wrong and nothing is slower.
DDP_STRIDES_WARNING = "Grad strides do not match bucket view strides"
WORKER_ENV_DEFAULTS = {READER_CPU_ENV: "0", "PYTHONWARNINGS": ",".join(
    f"ignore:{message}:UserWarning" for message in (MIN_ACTORS_WARNING, DDP_STRIDES_WARNING))}


def worker_env() -> dict[str, str]:
    """clipray's defaults for the Ray workers' environment that this process's environment does
    not set: a value set here already (by the user, or by a job's runtime_env) wins and is not
    repeated, which would also make Ray refuse to merge a job's runtime_env with the driver's."""
    defaults = dict(WORKER_ENV_DEFAULTS)
    if progress_bars_unwanted():
        defaults[PROGRESS_BARS_OFF_ENV] = "1"
    return {name: value for name, value in defaults.items() if name not in os.environ}


def progress_bars_unwanted() -> bool:
    """This process writes to a file (a job's log, CI) and the user has not chosen either way.

    Ray Data's progress bars in the Ray processes reach the driver as log lines, and in a file
    every redraw repeats each finished bar: 1,100 such lines in a 60-step run. Each execution's
    start and finish lines remain.
    """
    return not sys.stdout.isatty() and PROGRESS_BARS_OFF_ENV not in os.environ


# Ray Data logs a warning, once per process, that progress bars are off; clipray turns them off
# where output goes to a file (progress_bars_unwanted, build_dataset). Only this logger's warnings
# are dropped; its errors, and every other Ray Data warning, still show.
PROGRESS_LOGGER = "ray.data._internal.progress"


# Ray's core logs an error-level line whenever an actor whose constructor arguments sit in the
# object store may be restarted (ray#53727: a restart would fail if those objects were gone).
# Ray Data creates every actor-pool worker that way (the map function is `ray.put` once, and
# the operator holds it for as long as its actors live), so for clipray's preprocessing and
# embedding actors the condition cannot occur. The driver drops the lines it forwards from the
# workers that match; Ray reads the variable when `ray` is first imported.
SKIP_LOG_LINES = r"has constructor arguments in the object store and max_restarts > 0"
SKIP_LOG_LINES_ENV = "RAY_DEDUP_LOGS_SKIP_REGEX"


def skip_known_log_lines() -> None:
    """Set SKIP_LOG_LINES_ENV (unless the user set it) before this process imports ray."""
    os.environ.setdefault(SKIP_LOG_LINES_ENV, SKIP_LOG_LINES)


def quiet_known_warnings() -> None:
    """In this process, drop the Ray warnings that clipray knows do not apply (the workers of an
    embedded cluster get the same through `ray_data_logging_env`)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=MIN_ACTORS_WARNING, category=UserWarning)
    logging.getLogger(PROGRESS_LOGGER).setLevel(logging.ERROR)


def ray_data_logging_env(directory: str) -> dict[str, str]:
    """`RAY_DATA_LOGGING_CONFIG` for the workers of an embedded cluster: Ray Data's own default
    logging configuration plus PROGRESS_LOGGER at error level, written under `directory`.

    Ray Data applies the file when a process imports it. A value the user set wins.
    """
    import copy

    import yaml
    from ray.data._internal.logging import DEFAULT_CONFIG  # Ray's defaults, so nothing else changes

    name = "RAY_DATA_LOGGING_CONFIG"
    if name in os.environ:
        return {}
    config: dict[str, Any] = copy.deepcopy(DEFAULT_CONFIG)
    config["loggers"][PROGRESS_LOGGER] = {"level": "ERROR", "propagate": True}
    path = os.path.join(directory, "clipray-ray-data-logging.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return {name: path}


def quiet_progress_bars() -> None:
    """Progress bars off in this process's Ray Data context when `progress_bars_unwanted()`.

    The environment variable alone is not enough: Ray Train hands the driver's context to its
    workers, and the context reads the variable once, when ray.data is imported.
    """
    if progress_bars_unwanted():
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False


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
