"""One rule for which config values are local paths (clipray.config.paths), used alike by the
workers of a local run (train.launcher) and by a submitted job (jobs.submit)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from clipray.config import PipelineConfig, load_config, to_dict
from clipray.config.load import flatten
from clipray.config.paths import NAME_OR_PATH_KEYS, PATH_KEYS, WORKER_PATH_KEYS
from clipray.jobs.submit import resolve_for_job
from clipray.train.launcher import _worker_config

PATH_LIKE = ("source", "_path", "_file", "_dir", "font", "tokenizer", "init_from")


def string_keys(cls: type = PipelineConfig, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key of the schema whose value is a string (or None)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += string_keys(hint, (*prefix, f.name))  # type: ignore[arg-type]
        elif hint is str or hint == (str | None):
            out.append((*prefix, f.name))
    return out


def test_every_path_named_key_of_the_schema_is_classified():
    """A new setting that names a file must say whether it is this machine's path or a worker's."""
    path_named = {k for k in string_keys() if k[-1].endswith(PATH_LIKE)}
    assert path_named == set(PATH_KEYS) | set(WORKER_PATH_KEYS), path_named ^ (set(PATH_KEYS) | set(WORKER_PATH_KEYS))


@pytest.mark.parametrize("tokenizer", ["vocab.json", "openai"])
def test_launcher_and_submit_make_the_same_paths_absolute(tmp_path, monkeypatch, tokenizer):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vocab.json").write_text("{}")  # the file exists: a path; `openai` stays a name
    relative = {f"{section}.{key}": f"rel/{section}-{key}" for section, key in PATH_KEYS}
    relative["text_encoding.tokenizer"] = tokenizer
    relative["eval.zeroshot_source"] = "s3://bucket/zeroshot"  # a URI is never a local path
    relative["tracking.spool_dir"] = "spool"  # the worker's own path: as given
    config = load_config(data={"name": "p"}, overrides=[f"{k}={v}" for k, v in relative.items()])

    workers = flatten(_worker_config(config))
    job = flatten(resolve_for_job(config, base=tmp_path))
    given = flatten(to_dict(config))
    job.pop("tracking.tracking_uri"), workers.pop("tracking.tracking_uri")  # the job fixes the submitter's URI
    assert workers == job  # one rule: every key, path or not, comes out the same
    for section, key in PATH_KEYS:
        value = workers[f"{section}.{key}"]
        if (section, key) in NAME_OR_PATH_KEYS and tokenizer == "openai":
            assert value == "openai"
        elif relative[f"{section}.{key}"].startswith("s3://"):
            assert value == "s3://bucket/zeroshot"
        else:
            assert value == str(tmp_path / relative[f"{section}.{key}"]), (section, key)
    changed = {k for k in given if given[k] != workers.get(k)} - {"tracking.tracking_uri"}
    assert changed <= {f"{s}.{k}" for s, k in PATH_KEYS}, changed
    assert workers["tracking.spool_dir"] == "spool"
    assert Path(workers["data.source"]).is_absolute()
