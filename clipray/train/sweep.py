"""Sweeps: train variants of one pipeline as MLflow child runs under one parent run.

A sweep file names a base pipeline and the overrides of each variant:

    name: text-tower
    pipeline: ../clip-vit-b32.yaml            # relative to the sweep file
    overrides: {train.steps: 20000}           # applied to every variant (optional)
    variants:
      causal-eot: {model.text.attn: causal, model.text.pool: eot}
      bidirectional-first: {model.text.attn: bidirectional, model.text.pool: first}

Every variant's config is built and validated before anything starts. Each variant is an
ordinary `clipray.train.launcher.train` run (same data, seed and everything else) whose MLflow
run carries the tag `mlflow.parentRunId`; the parent run lists the variants and collects their
final metrics as `<variant>/<metric>`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clipray.config import PipelineConfig, load_config
from clipray.config.load import ConfigError, build
from clipray.errors import InvalidInputError


@dataclass(kw_only=True)
class SweepConfig:
    name: str
    pipeline: str  # base pipeline YAML, relative to the sweep file
    overrides: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    experiment: str | None = None  # defaults to the sweep name

    def __post_init__(self) -> None:
        if not self.variants:
            raise InvalidInputError("a sweep needs at least one entry under variants")
        for name, overrides in self.variants.items():
            if not isinstance(overrides, Mapping):
                raise InvalidInputError(f"variants.{name} must map config keys to values, got {overrides!r}")


@dataclass
class SweepResult:
    parent_run_id: str
    tracking_uri: str
    experiment: str
    child_run_ids: dict[str, str]
    metrics: dict[str, dict[str, float]]


def is_sweep_file(path: str | Path) -> bool:
    raw = yaml.safe_load(Path(path).read_text())
    return isinstance(raw, dict) and "variants" in raw


def load_sweep(path: str | Path) -> SweepConfig:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"sweep file not found: {path}") from None
    raw = dict(raw or {})
    raw.setdefault("name", Path(path).stem)
    return build(SweepConfig, raw, where=str(path))


def _as_overrides(mapping: Mapping[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in mapping.items()]  # JSON is valid YAML


def variant_configs(path: str | Path, extra_overrides: Iterable[str] = ()) -> tuple[SweepConfig, dict[str, PipelineConfig]]:
    """The sweep and each variant's validated config (base + sweep + variant + command-line overrides)."""
    sweep = load_sweep(path)
    base = (Path(path).parent / sweep.pipeline).resolve()
    if not base.exists():
        raise ConfigError(f"{path}: pipeline {sweep.pipeline!r} not found (looked for {base})")
    configs = {}
    for name, overrides in sweep.variants.items():
        try:
            configs[name] = load_config(base, [*_as_overrides(sweep.overrides), *_as_overrides(overrides),
                                               *extra_overrides])
        except ConfigError as e:
            raise ConfigError(f"{path}: variant {name!r}: {e}") from None
    return sweep, configs


def run_sweep(path: str | Path, extra_overrides: Iterable[str] = ()) -> SweepResult:
    """Train every variant in turn; one parent MLflow run, one child run per variant."""
    from clipray.tracking import resolve_tracking_uri, start_run
    from clipray.train.launcher import train

    sweep, configs = variant_configs(path, extra_overrides)
    first = next(iter(configs.values()))
    tracking_uri = resolve_tracking_uri(first.tracking.tracking_uri)
    experiment = sweep.experiment or sweep.name
    parent = start_run(experiment, tracking_uri, run_name=sweep.name,
                       tags={"clipray.sweep": sweep.name, "clipray.pipeline": first.name})
    print(f"[clipray] sweep {sweep.name!r}: parent MLflow run {parent.run_id}, variants {', '.join(configs)}",
          flush=True)
    status = "FAILED"
    children: dict[str, str] = {}
    metrics: dict[str, dict[str, float]] = {}
    try:
        parent.log_params({"sweep.pipeline": sweep.pipeline, "sweep.variants": ",".join(configs),
                           **{f"sweep.variant.{n}": json.dumps(v) for n, v in sweep.variants.items()}})
        for name, config in configs.items():
            config.tracking.parent_run_id = parent.run_id
            config.tracking.experiment = experiment
            config.tracking.run_name = f"{sweep.name}/{name}"
            result = train(config)
            children[name], metrics[name] = result.run_id, result.metrics
            parent.log_metrics({f"{name}/{k}": v for k, v in result.metrics.items()}, step=config.train.steps)
        status = "FINISHED"
        return SweepResult(parent.run_id, tracking_uri, experiment, children, metrics)
    finally:
        parent.close(status)
