"""Kubernetes renderings of a schedule: a KubeRay `RayCronJob` (alpha, KubeRay >= 1.6 with the
RayCronJob feature gate) or, for older operators, a `CronJob` whose pod creates a `RayJob`.

Both reuse the RayJob spec of the packaged template (clipray/schedule/rayjob.yaml, copied to
clusters/kuberay/rayjob.yaml as the example) with the retrain entrypoint. The pods
run the image, not the machine that renders, so the pipeline travels in the manifest: a
`ConfigMap` holds the validated config (overrides applied) and the head pod, where a Ray job's
entrypoint runs, mounts it at `MOUNT_DIR`. Paths in the config must then name what the pods can
read (object storage, or files inside the image): `cluster_path_problems` lists those that do not.
"""

from __future__ import annotations

import copy
import shlex
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from clipray.config import PipelineConfig, load_config, to_dict
from clipray.config.paths import is_relative_path, local_path_settings
from clipray.errors import InvalidInputError
from clipray.schedule.store import Schedule

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

RAYJOB_TEMPLATE = resources.files("clipray.schedule") / "rayjob.yaml"  # package data
MOUNT_DIR = "/etc/clipray"
CONFIG_KEY = "pipeline.yaml"
_VOLUME = "clipray-pipeline"


def configmap_name(s: Schedule) -> str:
    return f"clipray-{s.name}-pipeline"


def cluster_path_problems(config: PipelineConfig, base: Path | None = None) -> list[str]:
    """Settings that would make the scheduled job read or write this machine's disk, one line each.

    A URI is fine; so is an absolute path, which may exist inside the image (the default Unifont
    path does when the image installs Debian's `unifont`). `text_encoding.tokenizer` is a path only when
    such a file exists here (else it names a built-in vocabulary).
    """
    raw = to_dict(config)
    out = []
    for section, key, value in local_path_settings(raw, base or Path.cwd()):
        # storage_path is checked below: unset is a problem there too.
        if key == "storage_path" or not is_relative_path(value):
            continue
        out.append(f"{section}.{key} is the relative path {value!r}: the pods cannot see this machine's "
                   "files; give an s3:// URI (or an absolute path inside the image)")
    storage = raw["train"].get("storage_path")
    if storage is None or "://" not in str(storage):
        out.append(f"train.storage_path is {storage or 'unset (./clipray_runs)'}: checkpoints would land on "
                   "the head pod's disk, which is deleted with the job's cluster; give an s3:// URI")
    tracking = raw["tracking"].get("tracking_uri")
    if tracking is not None and not str(tracking).startswith(("http://", "https://", "databricks")):
        out.append(f"tracking.tracking_uri is {tracking!r}, a store on the head pod's disk; leave it unset "
                   "(the manifest sets MLFLOW_TRACKING_URI) or name an MLflow server")
    return out


def rayjob_spec(s: Schedule, template: Traversable = RAYJOB_TEMPLATE) -> dict[str, Any]:
    """The RayJob spec: the template's cluster, the pipeline's ConfigMap mounted on the head, and
    `clipray retrain` on the mounted config (the overrides are already applied in it)."""
    spec = copy.deepcopy(yaml.safe_load(template.read_text())["spec"])
    # The window is the job's start minute, so a retried pod of the same tick reuses it.
    spec["entrypoint"] = (f"python -m clipray retrain {MOUNT_DIR}/{CONFIG_KEY} --schedule {shlex.quote(s.name)} "
                          "--window $(date -u +%Y%m%dT%H%M)")
    spec["backoffLimit"] = s.max_retries
    pod = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    pod.setdefault("volumes", []).append({"name": _VOLUME, "configMap": {"name": configmap_name(s)}})
    pod["containers"][0].setdefault("volumeMounts", []).append(
        {"name": _VOLUME, "mountPath": MOUNT_DIR, "readOnly": True})
    return spec


def configmap(s: Schedule, config: PipelineConfig) -> dict[str, Any]:
    text = f"# clipray schedule {s.name}: {s.pipeline} {' '.join(s.overrides)}".rstrip() + "\n"
    text += yaml.safe_dump(to_dict(config), sort_keys=False)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": configmap_name(s)},
            "data": {CONFIG_KEY: text}}


def render(s: Schedule, kind: str = "RayCronJob", config: PipelineConfig | None = None) -> str:
    """Two YAML documents for `kubectl apply -f -`: the pipeline's ConfigMap and the schedule."""
    if kind not in ("RayCronJob", "CronJob"):
        raise InvalidInputError(f"unknown kind {kind!r}: RayCronJob or CronJob")
    config = config or load_config(s.pipeline, s.overrides)
    name = f"clipray-{s.name}"
    if kind == "RayCronJob":
        doc: dict[str, Any] = {"apiVersion": "ray.io/v1", "kind": "RayCronJob", "metadata": {"name": name},
                               "spec": {"schedule": s.cron, "concurrencyPolicy": "Forbid",
                                        "jobTemplate": rayjob_spec(s)}}
    else:
        rayjob = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"generateName": f"{name}-"},
                  "spec": rayjob_spec(s)}
        doc = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name},
               "spec": {"schedule": s.cron, "concurrencyPolicy": "Forbid", "jobTemplate": {"spec": {
                   "backoffLimit": 2, "template": {"spec": {
                       "serviceAccountName": "clipray-rayjob-creator",  # may create ray.io RayJobs
                       "restartPolicy": "OnFailure",
                       "containers": [{"name": "create-rayjob", "image": "bitnami/kubectl:1.31",
                                       "command": ["sh", "-c", 'echo "$RAYJOB" | kubectl create -f -'],
                                       "env": [{"name": "RAYJOB", "value": yaml.safe_dump(rayjob, sort_keys=False)}]}],
                   }}}}}}
    return yaml.safe_dump_all([configmap(s, config), doc], sort_keys=False)
