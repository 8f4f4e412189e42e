"""Kubernetes renderings of a schedule: a KubeRay `RayCronJob` (alpha, KubeRay >= 1.6 with the
RayCronJob feature gate) or, for older operators, a `CronJob` whose pod creates a `RayJob`.
Both reuse the RayJob spec of clusters/kuberay/rayjob.yaml with the retrain entrypoint."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import yaml

from clipray.schedule.store import Schedule

RAYJOB_TEMPLATE = Path(__file__).resolve().parents[2] / "clusters" / "kuberay" / "rayjob.yaml"


def rayjob_spec(s: Schedule, template: Path = RAYJOB_TEMPLATE) -> dict[str, Any]:
    spec = copy.deepcopy(yaml.safe_load(template.read_text())["spec"])
    sets = " ".join(f"--set {shlex.quote(o)}" for o in s.overrides)
    # The window is the job's start minute, so a retried pod of the same tick reuses it.
    spec["entrypoint"] = (f"python -m clipray retrain {shlex.quote(s.pipeline)} {sets} --schedule {s.name} "
                          "--window $(date -u +%Y%m%dT%H%M)").replace("  ", " ")
    spec["backoffLimit"] = s.max_retries
    return spec


def render(s: Schedule, kind: str = "RayCronJob") -> str:
    name = f"clipray-{s.name}"
    if kind == "RayCronJob":
        doc: dict[str, Any] = {"apiVersion": "ray.io/v1", "kind": "RayCronJob", "metadata": {"name": name},
                               "spec": {"schedule": s.cron, "concurrencyPolicy": "Forbid",
                                        "jobTemplate": rayjob_spec(s)}}
    elif kind == "CronJob":
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
    else:
        raise ValueError(f"unknown kind {kind!r}: RayCronJob or CronJob")
    return yaml.safe_dump(doc, sort_keys=False)
