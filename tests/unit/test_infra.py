"""The cluster files under infra/: every manifest parses; the compose file validates against the published
compose-spec schema (vendored by check-jsonschema); KubeRay and Prefect manifests, for which no schema is
published on the package registries, are checked for the fields the project relies on (docs/cluster.md says how
to validate them against a live cluster)."""

from __future__ import annotations

import importlib
import json
import re
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from pipelines.settings import Settings

INFRA = Path(__file__).resolve().parents[2] / "infra"
K8S = INFRA / "k8s"


def _variables(model: type[BaseSettings]) -> set[str]:
    """Every environment variable a settings model reads: its prefixed field names and aliases, and its
    sub-models' variables."""
    names = set()
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings):
            names |= _variables(field.annotation)
        elif isinstance(field.validation_alias, AliasChoices):
            names |= {str(choice) for choice in field.validation_alias.choices}
        else:
            names.add(field.validation_alias or model.model_config["env_prefix"].upper() + name.upper())
    return names


SETTINGS_VARIABLES = _variables(Settings)
PLATFORM_VARIABLES = SETTINGS_VARIABLES | {
    "PREFECT_API_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL",
}


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _by_kind(kind: str) -> dict:
    [document] = [doc for path in K8S.glob("*.yaml") for doc in _documents(path) if doc["kind"] == kind]
    return document


def test_every_manifest_parses_and_names_its_kind() -> None:
    paths = [*INFRA.rglob("*.yaml"), *INFRA.rglob("*.json")]
    assert len(paths) >= 7
    for path in paths:
        documents = [json.loads(path.read_text())] if path.suffix == ".json" else _documents(path)
        assert documents, path
    for path in K8S.glob("*.yaml"):
        for document in _documents(path):
            assert {"apiVersion", "kind", "metadata"} <= set(document) and document["metadata"]["name"], path


def test_the_compose_file_validates_against_the_compose_spec() -> None:
    schema = json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(compose)
    services = compose["services"]
    assert {"postgres", "minio", "mlflow", "prefect-server", "prefect-worker", "ray-head", "ray-worker"} <= set(
        services
    )
    assert "postgresql://" in " ".join(services["mlflow"]["command"])
    environment = compose["x-platform"]["environment"]
    assert set(environment) <= PLATFORM_VARIABLES  # only settings the platform reads
    assert {"RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PROMPTSEG_STORE_URL"} <= set(environment)
    with pytest.raises(jsonschema.ValidationError):  # the schema does catch a malformed service
        jsonschema.validators.validator_for(schema)(schema).validate({"services": {"x": {"ports": "8000"}}})


def test_kuberay_manifests_carry_what_the_platform_relies_on() -> None:
    cluster, job, service = _by_kind("RayCluster"), _by_kind("RayJob"), _by_kind("RayService")
    for manifest in (cluster, job, service):
        assert manifest["apiVersion"] == "ray.io/v1"
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"], service["spec"]["rayClusterConfig"]):
        assert spec["rayVersion"] == importlib.import_module("ray").__version__
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert head["image"].startswith("promptseg:")
        assert {"configMapRef": {"name": "promptseg-settings"}} in head["envFrom"]
        for group in spec["workerGroupSpecs"]:
            worker = group["template"]["spec"]["containers"][0]
            assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert job["spec"]["entrypoint"].startswith("promptseg train ") and "--gpu" in job["spec"]["entrypoint"]
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    [application] = serve_config["applications"]
    module, attribute = application["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attribute))  # the import path really resolves
    [deployment] = application["deployments"]
    assert deployment["name"] == "PromptSegEndpoint" and deployment["max_queued_requests"] > 0


def test_settings_configmap_and_prefect_pool_are_consistent() -> None:
    config = _by_kind("ConfigMap")
    assert set(config["data"]) <= PLATFORM_VARIABLES
    assert "RAY_ADDRESS" not in config["data"]  # Ray's own pods read the map: a RayJob must use its own cluster
    worker = _by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert worker["command"][:3] == ["prefect", "worker", "start"] and "kubernetes" in worker["command"]
    template = json.loads((K8S / "prefect-work-pool.json").read_text())
    placeholders = set(re.findall(r"\{\{ (\w+) \}\}", json.dumps(template["job_configuration"])))
    assert placeholders <= set(template["variables"]["properties"])  # every placeholder has a variable
    ray_address = template["variables"]["properties"]["env"]["default"]["RAY_ADDRESS"]
    assert ray_address.startswith("ray://promptseg-head-svc.")  # else a flow-run job starts a Ray head of its own


def test_the_dockerfile_installs_like_the_makefile() -> None:
    dockerfile = (INFRA / "Dockerfile").read_text()
    makefile = (INFRA.parent / "Makefile").read_text()
    torch_pin = re.search(r"torch==[\d.]+", makefile).group(0)
    assert "ARG VARIANT=cpu" in dockerfile and "FROM torch-${VARIANT}" in dockerfile
    assert dockerfile.count(torch_pin) == 2  # the CPU and the CUDA stage
    assert "-c constraints.txt" in dockerfile and "COPY pyproject.toml constraints.txt" in dockerfile


def _pod_specs() -> dict[str, dict]:
    """Every pod template of the KubeRay objects and the Prefect job template, by a readable name."""
    cluster, job, service = _by_kind("RayCluster"), _by_kind("RayJob"), _by_kind("RayService")
    specs = {}
    for name, spec in (
        ("RayCluster", cluster["spec"]),
        ("RayJob", job["spec"]["rayClusterSpec"]),
        ("RayService", service["spec"]["rayClusterConfig"]),
    ):
        specs[f"{name} head"] = spec["headGroupSpec"]["template"]["spec"]
        for group in spec["workerGroupSpecs"]:
            specs[f"{name} {group['groupName']} workers"] = group["template"]["spec"]
    template = json.loads((K8S / "prefect-work-pool.json").read_text())
    specs["Prefect flow-run job"] = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    return specs


def test_no_secret_is_committed() -> None:
    """Secrets are created with kubectl from the operator's own values (config.yaml says how), never applied from
    a committed document with placeholder values."""
    kinds = {doc["kind"] for path in K8S.glob("*.yaml") for doc in _documents(path)}
    assert "Secret" not in kinds
    assert "kubectl -n promptseg create secret generic promptseg-secrets" in (K8S / "config.yaml").read_text()


def test_every_pod_mounts_the_shared_workspace() -> None:
    """Tasks, reloads, jobs and the audit log live in the workspace: every pod mounts the same claim there."""
    [claim] = [doc for doc in _documents(K8S / "workspace.yaml") if doc["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for name, spec in _pod_specs().items():
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claimed = {
            n
            for n, v in volumes.items()
            if v.get("persistentVolumeClaim", {}).get("claimName") == "promptseg-workspace"
        }
        mounts = {(m["name"], m["mountPath"]) for m in spec["containers"][0].get("volumeMounts", [])}
        assert any((volume, "/workspace") in mounts for volume in claimed), name


def test_ray_pods_have_http_probes_and_autoscaling_where_replicas_vary() -> None:
    """KubeRay's injected probes run wget, which the slim image lacks: every Ray container states HTTP probes on
    the GCS (head) or the raylet (workers). A cluster whose worker groups may grow has the in-tree autoscaler."""
    for name, spec in _pod_specs().items():
        if name.startswith("Prefect"):
            continue
        container = spec["containers"][0]
        port = 8265 if name.endswith("head") else 52365
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] == port, (name, probe)
    for kind, spec in (
        ("RayCluster", _by_kind("RayCluster")["spec"]),
        ("RayService", _by_kind("RayService")["spec"]["rayClusterConfig"]),
        ("RayJob", _by_kind("RayJob")["spec"]["rayClusterSpec"]),
    ):
        varies = any(g["minReplicas"] < g["maxReplicas"] for g in spec["workerGroupSpecs"])
        assert spec.get("enableInTreeAutoscaling", False) == varies, kind


def test_the_image_has_no_entrypoint_that_orchestrators_would_prefix() -> None:
    """A Prefect Kubernetes job gives only args (`prefect flow-run execute`) and KubeRay its own command: with an
    ENTRYPOINT of `promptseg` these would run as `promptseg prefect ...`."""
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert not re.search(r"^ENTRYPOINT", dockerfile, re.MULTILINE)
    assert 'CMD ["promptseg", "--help"]' in dockerfile


def test_compose_publishes_only_the_authenticated_endpoint_beyond_loopback_and_mlflow_accepts_its_service_name() -> (
    None
):
    """MLflow, Prefect, the Ray dashboard (the Jobs API: code execution) and the object store have no authentication:
    they are published on 127.0.0.1 only; the endpoint requires its API key. The other services reach MLflow as
    `mlflow:5000`, a Host header MLflow 3 refuses unless listed."""
    services = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]
    published = [(name, str(port)) for name, service in services.items() for port in service.get("ports", [])]
    assert len(published) >= 5
    assert [(name, port) for name, port in published if not port.startswith("127.0.0.1:")] == [
        ("ray-head", "8000:8000")
    ]
    [allowed] = [arg for arg in services["mlflow"]["command"] if arg.startswith("--allowed-hosts=")]
    assert "mlflow:5000" in allowed.removeprefix("--allowed-hosts=").split(",")


def test_compose_runs_the_dask_scheduler_preprocessing_is_pointed_at() -> None:
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    address = compose["x-platform"]["environment"]["PROMPTSEG_DASK_ADDRESS"]
    host, port = address.removeprefix("tcp://").split(":")
    scheduler = compose["services"][host]
    assert scheduler["entrypoint"] == ["dask"] and scheduler["command"][:3] == ["scheduler", "--port", port]
    worker = compose["services"]["dask-worker"]
    assert worker["command"][:2] == ["worker", address]
