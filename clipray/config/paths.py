"""Which config values are local paths, and the config with those made absolute.

One rule for every process that reads a config in another working directory than the one it was
written for: the Ray Train workers of a local run, the job `clipray submit` sends to a cluster,
the pods of a scheduled RayJob (which must not see relative paths at all), and a resumed run
comparing its paths with the ones it recorded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clipray.config.schema import PipelineConfig

# (section, key) of every setting that may name a file or directory on the machine that loads the
# config. A URI (s3://...) is never a local path.
PATH_KEYS: tuple[tuple[str, str], ...] = (
    ("data", "source"), ("eval", "zeroshot_source"), ("eval", "classes_file"), ("train", "storage_path"),
    ("model", "init_from"), ("text_encoding", "font"), ("text_encoding", "tokenizer"),
)
# Also a name (`openai`, `words`): a path only when such a file exists.
NAME_OR_PATH_KEYS = frozenset({("text_encoding", "tokenizer")})
# Paths on the machine of the process that uses them (the rank-0 worker's spool), never this one's:
# left as given.
WORKER_PATH_KEYS: tuple[tuple[str, str], ...] = (("tracking", "spool_dir"),)


def is_relative_path(value: Any) -> bool:
    """A non-empty string that is neither a URI nor an absolute path."""
    return isinstance(value, str) and bool(value) and "://" not in value and not os.path.isabs(value)


def local_path_settings(raw: Mapping[str, Any], base: Path) -> Iterator[tuple[str, str, Any]]:
    """(section, key, value) of the PATH_KEYS set in the config dict `raw`; a NAME_OR_PATH_KEYS
    value only when a file of that name exists under `base` (else it names a built-in)."""
    for section, key in PATH_KEYS:
        value = raw.get(section, {}).get(key)
        if value is None or value == "" or ((section, key) in NAME_OR_PATH_KEYS and not (base / str(value)).exists()):
            continue
        yield section, key, value


def _absolute(value: Any, base: Path) -> Any:
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    return str((base / value).resolve()) if is_relative_path(value) else value


def with_absolute_paths(config: PipelineConfig, base: Path | None = None) -> dict[str, Any]:
    """The config as a dict (`to_dict`) with its relative local paths made absolute from `base`
    (default: the working directory); URIs and absolute paths are kept as they are."""
    from clipray.config.load import to_dict

    base = base or Path.cwd()
    raw = to_dict(config)
    for section, key, value in local_path_settings(raw, base):
        raw[section][key] = _absolute(value, base)
    return raw
