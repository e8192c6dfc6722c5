"""Every config in cluster/ validates against the schema its consumer enforces, and a misspelled key fails.

- cluster/aws.yaml, cluster/gcp.yaml: Ray's own cluster-config validator (``prepare_config`` + ``validate_config``,
  what ``ray up`` runs; ray-schema.json closes every level except provider-specific ``node_config``). AWS
  ``node_config`` is checked against botocore's EC2 ``RunInstances`` input model (what Ray passes it to); GCP
  ``node_config`` keys against the Compute Engine Instance fields listed below.
- cluster/kuberay/*.yaml: the ray.io/v1 fields vendored in cluster/kuberay/schema/ray.io_v1.schema.json and the
  Kubernetes core types in k8s_core.schema.json, every object closed: the API server prunes unknown fields
  silently, so here an unknown key is an error.
- Versions: the Ray images, ``rayVersion`` and the Dockerfile's base match pyproject's ``ray`` pin.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
SCHEMA = CLUSTER / "kuberay" / "schema"
LAUNCHER_CONFIGS = ["aws.yaml", "gcp.yaml"]
KUBERAY_MANIFESTS = ["raycluster.yaml", "rayjob.yaml", "mlflow.yaml", "namespace.yaml"]


def ray_pin() -> str:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [m.group(1) for d in dependencies if (m := re.fullmatch(r"ray\[[^\]]*\]==(\S+)", d.strip()))]
    assert len(pins) == 1, f"expected one exact ray pin in pyproject.toml, got {dependencies}"
    return pins[0]


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / name).read_text())


def load_all(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((CLUSTER / "kuberay" / name).read_text()) if doc is not None]


# --- Ray cluster launcher ----------------------------------------------------------------------------------------
def ray_validate(config: dict[str, Any]) -> None:
    """What ``ray up`` does before touching a cloud: fill in the provider's defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_rays_validator(name: str) -> None:
    ray_validate(load(name))


# A misspelling at each level the Ray schema closes.
MISSPELLINGS = [
    (("max_workers",), "max_worker"),
    (("idle_timeout_minutes",), "idle_timeout_minute"),
    (("available_node_types", "gpu_train", "min_workers"), "min_worker"),
    (("available_node_types", "cpu_decode", "worker_setup_commands"), "worker_setup_command"),
    (("docker", "pull_before_run"), "pull_before_runs"),
    (("auth", "ssh_user"), "ssh_users"),
]


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
@pytest.mark.parametrize(
    ("path", "typo"), MISSPELLINGS, ids=lambda x: "/".join(x) if isinstance(x, tuple) else x
)
def test_launcher_config_misspelled_key_fails(name: str, path: tuple[str, ...], typo: str) -> None:
    config = load(name)
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    parent[typo] = parent.pop(path[-1])
    with pytest.raises(jsonschema.ValidationError, match=typo):
        ray_validate(config)


def aws_node_config_errors(node_config: dict[str, Any]) -> str:
    """botocore's own validation of EC2 RunInstances parameters (Ray adds MinCount/MaxCount at launch)."""
    import botocore.session
    from botocore.validate import ParamValidator

    shape = (
        botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    )
    report = ParamValidator().validate({"MinCount": 1, "MaxCount": 1, **node_config}, shape)
    return report.generate_report() if report.has_errors() else ""


def test_aws_node_configs_are_valid_run_instances_parameters() -> None:
    for node_type, spec in load("aws.yaml")["available_node_types"].items():
        assert aws_node_config_errors(spec["node_config"]) == "", node_type


def test_aws_node_config_misspelling_fails() -> None:
    node_config = load("aws.yaml")["available_node_types"]["gpu_train"]["node_config"]
    node_config["BlockDeviceMappings"][0]["Ebs"]["VolumeSiz"] = node_config["BlockDeviceMappings"][0][
        "Ebs"
    ].pop("VolumeSize")
    assert "VolumeSiz" in aws_node_config_errors(node_config)


# Compute Engine API v1: the fields of Instance and the nested objects our node_configs use (a key list, not the
# whole resource; from the compute v1 REST reference). `scheduling` is given as a list, as in Ray's own
# ray/autoscaler/gcp/defaults.yaml.
GCE_FIELDS: dict[str, set[str]] = {
    "Instance": {
        "name", "description", "machineType", "disks", "networkInterfaces", "metadata", "serviceAccounts",
        "scheduling", "guestAccelerators", "labels", "tags", "minCpuPlatform", "canIpForward",
        "deletionProtection", "shieldedInstanceConfig", "confidentialInstanceConfig", "reservationAffinity",
        "advancedMachineFeatures", "resourcePolicies", "hostname", "displayDevice", "networkPerformanceConfig",
        "privateIpv6GoogleAccessPolicy", "params",
    },
    "AttachedDisk": {
        "type", "mode", "source", "deviceName", "boot", "autoDelete", "initializeParams", "interface",
        "diskSizeGb", "guestOsFeatures", "diskEncryptionKey", "index",
    },
    "AttachedDiskInitializeParams": {
        "diskName", "sourceImage", "diskSizeGb", "diskType", "labels", "description", "provisionedIops",
        "provisionedThroughput", "resourcePolicies", "sourceSnapshot", "sourceImageEncryptionKey",
    },
    "Scheduling": {
        "onHostMaintenance", "automaticRestart", "preemptible", "provisioningModel",
        "instanceTerminationAction", "nodeAffinities", "minNodeCpus", "maxRunDuration",
    },
    "ServiceAccount": {"email", "scopes"},
    "Metadata": {"items", "fingerprint", "kind"},
    "MetadataItem": {"key", "value"},
}  # fmt: skip


def gce_unknown_keys(node_config: dict[str, Any]) -> list[str]:
    unknown = [f"node_config.{k}" for k in set(node_config) - GCE_FIELDS["Instance"]]
    nested = [
        ("disks", "AttachedDisk"),
        ("scheduling", "Scheduling"),
        ("serviceAccounts", "ServiceAccount"),
    ]
    for field, kind in nested:
        for i, item in enumerate(node_config.get(field, [])):
            unknown += [f"{field}[{i}].{k}" for k in set(item) - GCE_FIELDS[kind]]
    for i, disk in enumerate(node_config.get("disks", [])):
        params = disk.get("initializeParams", {})
        unknown += [
            f"disks[{i}].initializeParams.{k}"
            for k in set(params) - GCE_FIELDS["AttachedDiskInitializeParams"]
        ]
    metadata = node_config.get("metadata", {})
    unknown += [f"metadata.{k}" for k in set(metadata) - GCE_FIELDS["Metadata"]]
    for i, item in enumerate(metadata.get("items", [])):
        unknown += [f"metadata.items[{i}].{k}" for k in set(item) - GCE_FIELDS["MetadataItem"]]
    return unknown


def test_gcp_node_config_keys_are_instance_fields() -> None:
    for node_type, spec in load("gcp.yaml")["available_node_types"].items():
        assert gce_unknown_keys(spec["node_config"]) == [], node_type


def test_gcp_node_config_misspelling_fails() -> None:
    node_config = load("gcp.yaml")["available_node_types"]["gpu_train"]["node_config"]
    node_config["disks"][0]["initializeParams"]["sourceImag"] = node_config["disks"][0][
        "initializeParams"
    ].pop("sourceImage")
    node_config["machineTyp"] = node_config.pop("machineType")
    assert sorted(gce_unknown_keys(node_config)) == [
        "disks[0].initializeParams.sourceImag",
        "node_config.machineTyp",
    ]


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_pins_rays_version_auth_and_a_private_dashboard(name: str) -> None:
    config = load(name)
    pin = ray_pin()
    images = [config["docker"]["image"], config["docker"]["head_image"]] + [
        spec["docker"]["worker_image"] for spec in config["available_node_types"].values() if "docker" in spec
    ]
    for image in images:
        assert re.fullmatch(rf"rayproject/ray:{re.escape(pin)}-py311-(gpu|cpu)", image), image
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    head_start = " ".join(config["head_start_ray_commands"])
    worker_start = " ".join(config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=token ray start --address=" in worker_start
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "8265" not in json.dumps(config["provider"])
    types = config["available_node_types"]
    assert types["gpu_train"]["resources"]["GPU"] == 8
    assert types["cpu_decode"]["resources"]["GPU"] == 0 and types["cpu_decode"]["resources"]["decode"] > 0
    for node_type in ("gpu_train", "cpu_decode"):
        assert types[node_type]["min_workers"] < types[node_type]["max_workers"] <= config["max_workers"]
        assert any(
            "pip install" in c and "$HOME/stpa[" in c for c in types[node_type]["worker_setup_commands"]
        )


# --- KubeRay ----------------------------------------------------------------------------------------------------
def kube_validator(kind: str) -> jsonschema.Draft7Validator:
    definitions = {
        **json.loads((SCHEMA / "k8s_core.schema.json").read_text())["definitions"],
        **json.loads((SCHEMA / "ray.io_v1.schema.json").read_text())["definitions"],
    }
    return jsonschema.Draft7Validator(
        {"definitions": definitions, "allOf": [{"$ref": f"#/definitions/{kind}"}]}
    )


# kind -> (apiVersion, schema definition)
KINDS = {
    "RayCluster": ("ray.io/v1", "RayCluster"),
    "RayJob": ("ray.io/v1", "RayJob"),
    "Service": ("v1", "V1Service"),
    "StatefulSet": ("apps/v1", "V1StatefulSet"),
    "Deployment": ("apps/v1", "V1Deployment"),
    "Namespace": ("v1", "V1Namespace"),
    "ServiceAccount": ("v1", "V1ServiceAccount"),
}


def kube_errors(doc: dict[str, Any]) -> list[str]:
    api_version, definition = KINDS[doc["kind"]]
    assert doc["apiVersion"] == api_version, doc["kind"]
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in kube_validator(definition).iter_errors(doc)
    ]


@pytest.mark.parametrize("name", KUBERAY_MANIFESTS)
def test_kuberay_manifests_validate(name: str) -> None:
    docs = load_all(name)
    assert docs
    for doc in docs:
        assert kube_errors(doc) == [], f"{name}: {doc['kind']}"


def pod_spec(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]


KUBE_MISSPELLINGS = [
    ("raycluster.yaml", lambda d: d["spec"], "enableInTreeAutoscaling", "enableInTreeAutoScaling"),
    ("raycluster.yaml", lambda d: d["spec"]["workerGroupSpecs"][0], "maxReplicas", "maxReplica"),
    ("raycluster.yaml", lambda d: pod_spec(d["spec"]["headGroupSpec"])["containers"][0], "image", "imag"),
    (
        "raycluster.yaml",
        lambda d: pod_spec(d["spec"]["workerGroupSpecs"][0])["containers"][0]["resources"],
        "limits",
        "limit",
    ),
    ("rayjob.yaml", lambda d: d["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
    ("rayjob.yaml", lambda d: d["spec"]["rayClusterSpec"]["authOptions"], "mode", "mod"),
    (
        "mlflow.yaml",
        lambda d: d["spec"]["template"]["spec"]["containers"][0],
        "readinessProbe",
        "readinesProbe",
    ),
]


@pytest.mark.parametrize(
    ("name", "parent", "key", "typo"), KUBE_MISSPELLINGS, ids=lambda x: x if isinstance(x, str) else ""
)
def test_kuberay_misspelled_key_fails(name: str, parent: Any, key: str, typo: str) -> None:
    docs = load_all(name)
    target = next(d for d in docs if _has(parent, d, key))
    container = parent(target)
    container[typo] = container.pop(key)
    errors = kube_errors(target)
    assert any(typo in e for e in errors), errors


def _has(parent: Any, doc: dict[str, Any], key: str) -> bool:
    try:
        return key in parent(doc)
    except (KeyError, IndexError, TypeError):
        return False


def test_kuberay_versions_auth_and_gpu_groups() -> None:
    pin = ray_pin()
    (cluster,) = load_all("raycluster.yaml")
    (job,) = load_all("rayjob.yaml")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["rayVersion"] == pin
        assert spec["authOptions"] == {"mode": "token"}
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        assert set(groups) == {"gpu-train", "cpu-decode"}
        gpu = pod_spec(groups["gpu-train"])["containers"][0]
        assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert gpu["image"].endswith(f"ray{pin}-py311-gpu")
        cpu = pod_spec(groups["cpu-decode"])["containers"][0]
        assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
        assert cpu["image"].endswith(f"ray{pin}-py311-cpu")
        assert "decode" in groups["cpu-decode"]["rayStartParams"]["resources"]
        head = pod_spec(spec["headGroupSpec"])["containers"][0]
        assert head["image"].endswith(f"ray{pin}-py311-cpu")
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"ARG RAY_IMAGE=rayproject/ray:{pin}-py311-gpu" in dockerfile
    assert f"RAY_IMAGE=rayproject/ray:{pin}-py311-cpu" in dockerfile


def test_rayjob_runs_the_charades_workflow_against_the_mlflow_service() -> None:
    (job,) = load_all("rayjob.yaml")
    entrypoint = job["spec"]["entrypoint"].split()
    assert entrypoint[:2] == ["python", "/home/ray/stpa/workflows/train_charades.py"]
    assert (REPO / "workflows" / "train_charades.py").exists()
    from workflows.training import build_parser

    args = build_parser("charades").parse_args(entrypoint[2:])  # every flag exists (an earlier one did not)
    assert args.autoscaling and args.use_gpu  # GPU nodes come on demand: the present ones need not fit
    for flag in ("--data-root", "--storage"):
        assert entrypoint[entrypoint.index(flag) + 1].startswith("s3://")
    services = {d["metadata"]["name"]: d for d in load_all("mlflow.yaml") if d["kind"] == "Service"}
    for container in [
        pod_spec(job["spec"]["rayClusterSpec"]["headGroupSpec"])["containers"][0],
        *(pod_spec(g)["containers"][0] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]),
    ]:
        uri = {e["name"]: e.get("value") for e in container["env"]}["MLFLOW_TRACKING_URI"]
        host, port = re.fullmatch(r"http://([^:/]+):(\d+)", uri).groups()
        assert int(port) in [p["port"] for p in services[host]["spec"]["ports"]]


def test_mlflow_uses_postgres_and_an_object_store_without_inline_secrets() -> None:
    docs = load_all("mlflow.yaml")
    assert "Secret" not in {d["kind"] for d in docs}, "secrets are created by the user, never shipped"
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    command = " ".join(container["args"])
    assert (
        '--backend-store-uri "postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@stpa-mlflow-db:5432/'
        in command
    )
    assert "--artifacts-destination s3://" in command
    secret_refs = {e["secretRef"]["name"] for e in container["envFrom"]}
    assert "stpa-mlflow-db" in secret_refs
    (database,) = [d for d in docs if d["kind"] == "StatefulSet"]
    db_container = database["spec"]["template"]["spec"]["containers"][0]
    assert {e["secretRef"]["name"] for e in db_container["envFrom"]} == {"stpa-mlflow-db"}
