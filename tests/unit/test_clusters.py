"""Every file under clusters/: YAML parses; launcher configs pass Ray's own schema; KubeRay
manifests carry the fields KubeRay requires, with token auth on and a CPU/GPU worker split."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

FILES = sorted((ROOT / "clusters").rglob("*.yaml"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_cluster_recipes_exist():
    names = {str(p.relative_to(ROOT / "clusters")) for p in FILES}
    assert {"aws/cluster.yaml", "local/cluster.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path):
    assert _docs(path), f"{path} is empty"


def test_rayjob_example_is_the_packaged_template():
    """`clipray schedule render` reads the template inside the package; the example beside the
    other recipes must be that same file, not a second copy that drifts."""
    from clipray.schedule.k8s import RAYJOB_TEMPLATE

    assert (ROOT / "clusters/kuberay/rayjob.yaml").read_text() == RAYJOB_TEMPLATE.read_text()


LAUNCHER = [p for p in FILES if "kind" not in _docs(p)[0]]
KUBE = [p for p in FILES if "kind" in _docs(p)[0]]


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: str(p.relative_to(ROOT)))
def test_launcher_config_passes_ray_schema(path: Path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _docs(path)[0]
    validate_config(prepare_config(copy.deepcopy(config)))  # raises jsonschema.ValidationError
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in starts, "token auth must stay on in every recipe"


def test_launcher_schema_check_catches_a_broken_config():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _docs(ROOT / "clusters/aws/cluster.yaml")[0]
    config["available_node_types"]["gpu_train"]["max_workers"] = "four"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))


def test_aws_split_profile_and_storage():
    config = _docs(ROOT / "clusters/aws/cluster.yaml")[0]
    types = config["available_node_types"]
    assert {"cpu_data", "gpu_train"} <= set(types)
    assert types["gpu_train"]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert types["cpu_data"]["node_config"]["InstanceType"].startswith(("c", "m"))
    for name, t in types.items():
        assert "IamInstanceProfile" in t["node_config"], f"{name}: S3 through an instance profile"
        if name != config["head_node_type"]:
            assert 0 <= t["min_workers"] <= t["max_workers"]
    assert "object-store-memory" in " ".join(config["worker_start_ray_commands"])
    assert "AWS_SECRET_ACCESS_KEY" not in (ROOT / "clusters/aws/cluster.yaml").read_text()


def _check_cluster_spec(spec: dict[str, Any], where: str) -> None:
    assert spec["rayVersion"].startswith("2."), where
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token auth must stay on"
    head = spec["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"], f"{where}: head container image"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {"cpu-data", "gpu-train"} <= set(groups), where
    for name, g in groups.items():
        assert g["template"]["spec"]["containers"], f"{where}: {name} has no container"
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{where}: {name} replica bounds"
    gpu = groups["gpu-train"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" in gpu, where


@pytest.mark.parametrize("path", KUBE, ids=lambda p: str(p.relative_to(ROOT)))
def test_kuberay_manifest_has_required_fields(path: Path):
    for doc in _docs(path):
        assert doc["apiVersion"] == "ray.io/v1", path
        assert doc["metadata"]["name"], path
        kind, spec = doc["kind"], doc["spec"]
        if kind == "RayCluster":
            _check_cluster_spec(spec, str(path))
        elif kind == "RayJob":
            assert spec["entrypoint"], path
            _check_cluster_spec(spec["rayClusterSpec"], str(path))
        elif kind == "RayCronJob":
            assert spec["schedule"] and spec["jobTemplate"]["entrypoint"], path
        else:
            pytest.fail(f"{path}: unexpected kind {kind}")
