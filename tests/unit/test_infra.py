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
    assert set(_by_kind("Secret")["stringData"]) <= PLATFORM_VARIABLES
    worker = _by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert worker["command"][:3] == ["prefect", "worker", "start"] and "kubernetes" in worker["command"]
    template = json.loads((K8S / "prefect-work-pool.json").read_text())
    placeholders = set(re.findall(r"\{\{ (\w+) \}\}", json.dumps(template["job_configuration"])))
    assert placeholders <= set(template["variables"]["properties"])  # every placeholder has a variable


def test_the_dockerfile_installs_like_the_makefile() -> None:
    dockerfile = (INFRA / "Dockerfile").read_text()
    makefile = (INFRA.parent / "Makefile").read_text()
    torch_pin = re.search(r"torch==[\d.]+", makefile).group(0)
    assert "ARG VARIANT=cpu" in dockerfile and "FROM torch-${VARIANT}" in dockerfile
    assert dockerfile.count(torch_pin) == 2  # the CPU and the CUDA stage
    assert "-c constraints.txt" in dockerfile and "COPY pyproject.toml constraints.txt" in dockerfile
