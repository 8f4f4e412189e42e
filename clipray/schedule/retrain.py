"""One scheduled retraining run (`clipray retrain`, the entrypoint of the scheduled Ray job).

1. New data: the hive partitions (`<key>=<value>/` under data.source) that no registered version
   of the model has consumed yet. The consumed partitions are recorded on each registered model
   version (tag `clipray.partitions`), so a run that failed before registering consumed nothing
   and its partitions are taken by the retry: nothing is skipped.
2. Idempotence: a version already registered for this schedule window (tag `clipray.window`)
   means an earlier attempt got that far; the run then only finishes the champion decision.
3. Warm start from the version holding the `champion` alias; register the new version; score it
   and the champion with the same function (`score`: `clipray.eval.suite.evaluate`) on the same
   evaluation set, decoded once; move `champion` only if the new one scores strictly higher (or
   there is no champion yet): a tie keeps the incumbent.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipray.config import PipelineConfig, load_config, to_dict
from clipray.errors import InvalidInputError

if TYPE_CHECKING:
    from clipray.eval.loading import LoadedModel
    from clipray.eval.zeroshot import ZeroShotTask

CHAMPION = "champion"
METRIC = "eval/zeroshot_top1"


@dataclass
class RetrainOutcome:
    action: str  # "trained", "no-new-data", "already-registered"
    partitions: list[str]
    version: str | None = None
    parent_version: str | None = None
    new_score: float | None = None
    incumbent_score: float | None = None
    champion_moved: bool = False


def list_partitions(source: str, key: str, endpoint_url: str | None = None) -> list[str]:
    """Values of the `key=<value>` directories directly under `source`, sorted."""
    from pyarrow import fs

    if source.startswith("s3://"):
        from clipray.data.sources import resolve

        resolved: Any = resolve(source, endpoint_url)
        filesystem = resolved.filesystem if hasattr(resolved, "filesystem") else resolved[1]
        root = source.removeprefix("s3://").rstrip("/")
    else:
        filesystem, root = fs.LocalFileSystem(), str(Path(source).resolve())
    infos = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=False))
    prefix = f"{key}="
    return sorted(i.base_name[len(prefix):] for i in infos
                  if i.type == fs.FileType.Directory and i.base_name.startswith(prefix))


def select_partitions(config: PipelineConfig, key: str, values: list[str], all_values: list[str]) -> PipelineConfig:
    """`config` reading only partitions `values` of data.source."""
    data_fields = {f.name for f in dataclasses.fields(config.data)}
    raw = to_dict(config)
    if "partition_filter" in data_fields:  # the data sources filter hive partitions themselves
        raw["data"]["partition_filter"] = {key: list(values)}
    elif sorted(values) == sorted(all_values):
        pass  # everything under data.source
    elif len(values) == 1:
        raw["data"]["source"] = f"{config.data.source.rstrip('/')}/{key}={values[0]}"
    else:
        raise InvalidInputError(f"data.source {config.data.source!r}: selecting partitions {values} needs "
                         "data.partition_filter support in clipray.data.sources")
    return load_config(data=raw)


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def consumed_partitions(client: Any, name: str) -> tuple[set[str], dict[str, Any]]:
    """Partitions consumed by registered versions of `name`, and those versions by window."""
    consumed: set[str] = set()
    by_window: dict[str, Any] = {}
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except Exception:  # no such registered model yet
        return consumed, by_window
    for v in versions:
        consumed.update(json.loads(v.tags.get("clipray.partitions", "[]")))
        if "clipray.window" in v.tags:
            by_window[v.tags["clipray.window"]] = v
    return consumed, by_window


def load_champion(client: Any, uri: str, name: str) -> LoadedModel | None:
    """The registered version holding the `champion` alias, loaded; None when there is none yet."""
    from clipray.eval.loading import load_model

    try:
        client.get_model_version_by_alias(name, CHAMPION)
    except Exception:
        return None
    return load_model(f"models:/{name}@{CHAMPION}", uri)


def score(model: Any, config: PipelineConfig, task: ZeroShotTask) -> float:
    """The gate's number for either side: the one evaluation (`clipray.eval.suite.evaluate`) on `task`."""
    from clipray.eval.suite import evaluate

    return evaluate(model, config, task).metrics[METRIC]


def promotes(new_score: float, incumbent: float | None) -> bool:
    """The gate's rule: the challenger must score strictly higher; a tie keeps the incumbent."""
    return incumbent is None or new_score > incumbent


def decide_champion(client: Any, name: str, version: str, new_score: float, incumbent: float | None) -> bool:
    """Move `champion` to `version` when it beats the incumbent; record the decision on the version."""
    moved = promotes(new_score, incumbent)
    if moved:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "clipray.champion_decision",
                                 f"{'promoted' if moved else 'kept incumbent'}: {new_score:.4f} vs "
                                 f"{'none' if incumbent is None else f'{incumbent:.4f}'}")
    return moved


def retrain(config: PipelineConfig, *, window: str, schedule: str, partition_key: str = "dt") -> RetrainOutcome:
    from clipray.eval.loading import load_model
    from clipray.eval.zeroshot import load_zeroshot_task
    from clipray.tracking import resolve_tracking_uri
    from clipray.train.launcher import train

    if not config.eval.zeroshot_source:
        raise InvalidInputError("retraining compares models on eval.zeroshot_source: set it")
    uri = resolve_tracking_uri(config.tracking.tracking_uri)
    config = dataclasses.replace(config, tracking=dataclasses.replace(config.tracking, tracking_uri=uri))
    name = config.tracking.registered_model or config.name
    client = _client(uri)
    consumed, by_window = consumed_partitions(client, name)
    champion = load_champion(client, uri, name)
    parent = champion.source.version if champion is not None else None
    task = load_zeroshot_task(config)  # the one evaluation set both sides of the gate are scored on
    incumbent = score(champion.model, config, task) if champion is not None else None

    done = by_window.get(window)
    if done is not None:  # an earlier attempt of this window registered: finish, never register again
        parts = json.loads(done.tags.get("clipray.partitions", "[]"))
        moved = False
        if "clipray.champion_decision" not in done.tags:
            new = score(load_model(f"models:/{name}/{done.version}", uri).model, config, task)
            moved = decide_champion(client, name, str(done.version), new, incumbent if parent != done.version else None)
        return RetrainOutcome("already-registered", parts, str(done.version), parent, champion_moved=moved)

    available = list_partitions(config.data.source, partition_key, config.data.endpoint_url)
    new_parts = [p for p in available if f"{partition_key}={p}" not in consumed]
    if not new_parts:
        return RetrainOutcome("no-new-data", [], parent_version=parent, incumbent_score=incumbent)
    selected = select_partitions(config, partition_key, new_parts, available)
    tags = {"clipray.schedule": schedule, "clipray.window": window,
            "clipray.partitions": json.dumps([f"{partition_key}={p}" for p in new_parts]),
            "clipray.parent_version": parent or ""}
    result = train(selected, init_model=champion.source.state_dict if champion is not None else None, tags=tags,
                   version_tags=tags)
    if result.model_version is None:
        raise RuntimeError("training produced no checkpoint, so no model version was registered")
    new_score = score(load_model(f"models:/{name}/{result.model_version}", uri).model, config, task)
    moved = decide_champion(client, name, result.model_version, new_score, incumbent)
    return RetrainOutcome("trained", tags_parts(tags), result.model_version, parent, new_score, incumbent, moved)


def tags_parts(tags: dict[str, str]) -> list[str]:
    return json.loads(tags["clipray.partitions"])
