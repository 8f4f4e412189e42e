"""Parquet sources: local directories and globs, s3:// URIs (with S3-compatible endpoints)."""

from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow.fs
    import ray.data


def resolve(source: str, endpoint_url: str | None = None) -> tuple[list[str] | str, pyarrow.fs.FileSystem | None]:
    """Paths and filesystem for `source`; local globs are expanded, local paths made absolute."""
    if not source:
        raise ValueError("data.source is empty: set it to a parquet directory, glob or s3:// URI")
    if source.startswith("s3://"):
        from pyarrow import fs

        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict[str, object] = {}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return source.removeprefix("s3://"), fs.S3FileSystem(**kwargs)  # type: ignore[arg-type]
    if any(ch in source for ch in "*?["):
        paths = sorted(glob.glob(source))
        if not paths:
            raise FileNotFoundError(f"data.source {source!r} matches no files")
        return [os.path.abspath(p) for p in paths], None
    if not os.path.exists(source):
        raise FileNotFoundError(f"data.source {source!r} does not exist")
    return os.path.abspath(source), None


def read_parquet(source: str, *, columns: list[str] | None = None, endpoint_url: str | None = None,
                 shuffle_seed: int | None = None, num_cpus: float = 0.25,
                 files: list[str] | None = None) -> ray.data.Dataset:
    """A lazy dataset over the parquet files of `source` (or exactly `files` of it), projected to `columns`."""
    import ray.data
    from ray.data import FileShuffleConfig

    paths, filesystem = resolve(source, endpoint_url)
    if files is not None:
        if not files:
            raise ValueError(f"read_parquet: an empty file list for data.source {source!r}")
        paths = list(files)  # in this order: the caller (clipray.data.order) owns it
    shuffle = FileShuffleConfig(seed=shuffle_seed) if shuffle_seed is not None else None
    return ray.data.read_parquet(paths, filesystem=filesystem, columns=columns, shuffle=shuffle, num_cpus=num_cpus)
