"""Contract 4 without a server: the OpenAPI document (named bodies, descriptions, enums, the API-key scheme), error
answers as problem details (the FastAPI app and its gateway driven in process, outside Serve, so no route runs;
tests/integration/test_serving.py sends the route's own errors over HTTP), the client's
light imports (a fresh interpreter that refuses torch, ray and the rest), and the sum /metrics makes of Ray's
per-replica series."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from promptseg.inference import predictor
from promptseg.serving import api_models, gateway
from promptseg.serving.cluster_metrics import summed
from promptseg.serving.endpoint import api

CLIENT_MUST_NOT_IMPORT = ("torch", "ray", "mlflow", "SimpleITK", "PIL", "fastapi", "starlette", "prometheus_client")


@pytest.fixture(scope="module")
def openapi() -> dict:
    return api.openapi()


def test_every_route_and_field_is_described_and_every_body_named(openapi: dict) -> None:
    text = json.dumps(openapi)
    assert "Body_" not in text and '"pattern"' not in text
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            assert operation.get("description"), (method, path)
    schemas = openapi["components"]["schemas"]
    assert {"TaskForm", "VolumeTaskForm", "SegmentForm", "TaskList", "Problem"} <= set(schemas)
    for model, schema in schemas.items():  # every request and response body, file fields included
        assert schema.get("description") and all(f.get("description") for f in schema["properties"].values()), model


def test_choices_are_enums_and_the_api_key_is_a_security_scheme(openapi: dict) -> None:
    fields = openapi["components"]["schemas"]["SegmentForm"]["properties"]
    assert fields["mask_format"]["enum"] == ["png", "npy"]
    assert [v for choice in fields["volume_format"]["anyOf"] for v in choice.get("enum", [])] == [
        "nifti",
        "dicom-seg",
        "npy",
    ]
    scheme = openapi["components"]["securitySchemes"]["APIKey"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "X-API-Key")
    for path, operations in openapi["paths"].items():
        for operation in operations.values():
            assert (path in gateway.OPEN_PATHS) == ("security" not in operation), path
            problem = operation["responses"]["default"]["content"][api_models.PROBLEM_MEDIA_TYPE]["schema"]
            assert problem == {"$ref": "#/components/schemas/Problem"}


@pytest.fixture
def app() -> Iterator[TestClient]:
    """The FastAPI app in process, its gateway with an API key and a 1 kB body limit."""
    gateway.configure(gateway.GatewayConfig(1024, gateway.key_digest("the-key")))
    with TestClient(api, raise_server_exceptions=False) as client:
        yield client
    gateway.configure(gateway.GatewayConfig())


def _problem(response: object, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == api_models.PROBLEM_MEDIA_TYPE
    body = response.json()
    assert body == api_models.Problem.model_validate(body).model_dump(exclude_none=True)
    assert (body["status"], body["code"], body["type"]) == (status, code, api_models.PROBLEM_TYPE + code)
    # the gateway's id (a 500 leaves the app past the gateway, without its header; Serve's proxy adds one)
    assert body["instance"] == f"urn:promptseg:request:{response.headers.get('x-request-id', body['instance'][22:])}"
    return body


def test_every_refusal_is_problem_details(app: TestClient) -> None:
    key = {"X-API-Key": "the-key"}
    assert _problem(app.get("/v1/model"), 401, "missing_api_key")["title"] == "Unauthorized"
    _problem(app.get("/v1/model", headers={"X-API-Key": "wrong"}), 403, "wrong_api_key")
    assert "/v1/nothing" in _problem(app.get("/v1/nothing", headers=key), 404, "not_found")["detail"]
    wrong_method = app.put("/v1/segment", headers=key)
    _problem(wrong_method, 405, "method_not_allowed")
    assert wrong_method.headers["allow"] == "POST"
    _problem(app.post("/v1/segment", headers=key, content=bytes(2048)), 413, "body_too_large")
    outside_serve = app.get("/v1/tasks", headers=key)  # any failure is a problem too: here no replica runs the route
    assert "RayServeException" in _problem(outside_serve, 500, "internal_error")["detail"]


def test_the_api_defaults_are_the_predictors() -> None:
    assert (api_models.DEFAULT_MODALITY, api_models.DEFAULT_THRESHOLD) == (
        predictor.DEFAULT_MODALITY,
        predictor.DEFAULT_THRESHOLD,
    )


def test_the_client_imports_none_of_the_serving_stack() -> None:
    """In a fresh interpreter that refuses the heavy packages, the client imports and builds its uploads."""
    script = textwrap.dedent(
        f"""
        import sys
        refused = {CLIENT_MUST_NOT_IMPORT!r}

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in refused:
                    raise ImportError(f"the client imported {{name}}")

        sys.meta_path.insert(0, Refuse())
        import base64, io
        import numpy as np
        from promptseg.serving import client
        from promptseg.serving.api_models import MaskResult

        (field, (name, data)), = client._files(queries=[np.eye(3, dtype=np.float32)])
        assert (field, name) == ("queries", "queries_0.npy") and np.load(io.BytesIO(data)).shape == (3, 3)
        mask = MaskResult(query="q", height=3, width=3, mask_format="npy", foreground_fraction={{}},
                          mask_base64=base64.b64encode(data).decode())
        assert client.decode_mask(mask, [1]).shape == (3, 3)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


RAY_TEXT = """\
# HELP ray_promptseg_requests_total HTTP requests answered
# TYPE ray_promptseg_requests_total counter
ray_promptseg_requests_total{{WorkerId="{w}",application="{app}",replica="{r}",route="/v1/segment",status="200"}} {n}
# HELP ray_promptseg_batch_requests Requests served together by one serve.batch call
# TYPE ray_promptseg_batch_requests histogram
ray_promptseg_batch_requests_bucket{{WorkerId="{w}",application="{app}",replica="{r}",le="1.0"}} {n}
ray_promptseg_batch_requests_bucket{{WorkerId="{w}",application="{app}",replica="{r}",le="+Inf"}} {n}
ray_promptseg_batch_requests_count{{WorkerId="{w}",application="{app}",replica="{r}"}} {n}
ray_promptseg_batch_requests_sum{{WorkerId="{w}",application="{app}",replica="{r}"}} {n}
# HELP ray_other_metric Another application's
# TYPE ray_other_metric gauge
ray_other_metric{{application="{app}"}} 7.0
"""


def test_metrics_are_summed_over_replicas_and_nodes_per_application() -> None:
    node_a = RAY_TEXT.format(w="a1", app="promptseg", r="r1", n=3.0)
    node_b = RAY_TEXT.format(w="b1", app="promptseg", r="r2", n=4.0)
    node_c = RAY_TEXT.format(w="c1", app="promptseg-secure", r="r3", n=100.0)  # another application
    names = {metric.name for metric in gateway.METRICS}
    labels = {"le", *(key for metric in gateway.METRICS for key in metric.tag_keys)}
    metrics = {metric.name: metric for metric in summed([node_a, node_b, node_c], "promptseg", names, labels)}
    assert set(metrics) == {"promptseg_requests", "promptseg_batch_requests"}
    (requests,) = metrics["promptseg_requests"].samples
    assert (requests.name, requests.labels, requests.value) == (
        "promptseg_requests_total",
        {"route": "/v1/segment", "status": "200"},
        7.0,
    )
    batches = {(s.name, s.labels.get("le")): s.value for s in metrics["promptseg_batch_requests"].samples}
    assert batches == {
        ("promptseg_batch_requests_bucket", "1.0"): 7.0,
        ("promptseg_batch_requests_bucket", "+Inf"): 7.0,
        ("promptseg_batch_requests_count", None): 7.0,
        ("promptseg_batch_requests_sum", None): 7.0,
    }
