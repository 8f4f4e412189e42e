"""YAML + `--set key=value` → validated `PipelineConfig`.

Unknown keys are errors that name the key, its section and the valid keys, raised before any
Ray or torch work starts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from clipray.config.schema import PipelineConfig
from clipray.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A pipeline configuration that cannot be used, with the offending key in the message."""


def load_config(path: str | os.PathLike[str] | None = None, overrides: Iterable[str] = (),
                *, data: Mapping[str, Any] | None = None) -> PipelineConfig:
    """Load a pipeline YAML (or a dict), apply `a.b=c` overrides and validate it."""
    where = str(path) if path is not None else "<dict>"
    if data is None:
        if path is None:
            raise ConfigError("load_config needs a path or data")
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"pipeline file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    else:
        raw = copy.deepcopy(dict(data))  # overrides write into nested sections: not into the caller's
    raw = dict(raw or {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping")
    if path is not None:
        raw.setdefault("name", Path(path).stem)
    for item in overrides:
        apply_override(raw, item)
    if "text" in raw:  # the caption-input section was renamed so it no longer reads like model.text (the tower)
        raise ConfigError(f"{where}: the top-level section `text:` is now `text_encoding:` (kind, tokenizer, font); "
                          "`model.text` is the text tower")
    return build(PipelineConfig, raw, where=where)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(value)


def build(cls: type[T], raw: Any, *, where: str = "<config>", prefix: str = "") -> T:
    """Recursively build dataclass `cls` from a mapping, rejecting unknown keys."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: {prefix or 'top level'} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            section = prefix.rstrip(".") or "top level"
            raise ConfigError(
                f"{where}: unknown key '{prefix}{key}'{hint}; valid keys in {section}: {', '.join(sorted(fields))}"
            )
    kwargs = {name: _coerce(hints[name], raw[name], where, f"{prefix}{name}") for name in raw}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a missing required field
        raise ConfigError(f"{where}: {prefix or ''}{e}") from None
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # exponent forms YAML 1.1 leaves as text


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value or {}, where=where, prefix=key + ".")  # type: ignore[arg-type]
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {key}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{where}: {key} must be one of {choices}, got {value!r}")
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where, key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: {key} must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, where, key) for a, v in zip(args, value))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        (arg,) = get_args(tp)
        return [_coerce(arg, v, where, key) for v in value]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if tp in (int, float) and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        # YAML 1.1 (PyYAML) reads `1e-3` and `5e-4`, without a dot, as strings.
        value = float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
        return value
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; used for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}}; the inverse of `flatten`."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested
