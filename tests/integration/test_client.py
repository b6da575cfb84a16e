"""The HTTP client against a real local HTTP server that answers from a script: retries on 503/429 honour
Retry-After (seconds or an HTTP date), give up after `retries`, connections refused are retried until the server
is up, the timeout is the caller's, problem details (and bodies that are none) become typed `APIError`s, and segment
options travel as the `SegmentRequest`'s form fields (validated before anything is sent)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from pydantic import ValidationError

from promptseg.serving.api_models import SegmentRequest
from promptseg.serving.client import APIError, PromptSegClient

HEALTHY = (200, {}, {"status": "ok", "model_version": "3"})


class _Scripted(BaseHTTPRequestHandler):
    script: ClassVar[list[tuple[int, dict, dict]]] = []
    seen: ClassVar[list[float]] = []
    bodies: ClassVar[list[bytes]] = []
    url: ClassVar[str] = ""

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.do_GET()

    def do_GET(self) -> None:
        status, headers, body = self.script.pop(0) if self.script else HEALTHY
        self.seen.append(time.monotonic())
        time.sleep(float(headers.pop("Delay", 0)))  # a slow answer
        payload = json.dumps(body).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        return


def _serve_on(port: int) -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer(("127.0.0.1", port), _Scripted)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _problem(status: int, code: str, detail: str) -> dict:
    return {"type": f"urn:promptseg:problem:{code}", "title": "t", "status": status, "detail": detail, "code": code}


@pytest.fixture
def server() -> Iterator[type[_Scripted]]:
    _Scripted.script, _Scripted.seen, _Scripted.bodies = [], [], []
    httpd = _serve_on(0)
    _Scripted.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield _Scripted
    httpd.shutdown()


def test_overload_answers_are_retried_after_the_servers_retry_after(server: type[_Scripted]) -> None:
    # 3 s ahead: the first retry's 1 s wait and the date's whole seconds leave at least ~1 s when the 429 comes
    in_three_seconds = format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    server.script = [
        (503, {"Retry-After": "1"}, _problem(503, "overloaded", "busy")),
        (429, {"Retry-After": in_three_seconds}, _problem(429, "rate_limited", "slow down")),
        HEALTHY,
    ]
    with PromptSegClient(server.url, retries=3) as client:
        assert client.healthz().model_version == "3"
    first, second, third = server.seen
    assert second - first >= 0.95  # waited the 1 s it was told
    assert third - second >= 0.5  # waited until the HTTP date


def test_retries_give_up_with_the_typed_error(server: type[_Scripted]) -> None:
    server.script = [(503, {"Retry-After": "0"}, _problem(503, "overloaded", "busy"))] * 3
    with PromptSegClient(server.url, retries=2) as client, pytest.raises(APIError) as raised:
        client.healthz()
    assert raised.value.status == 503 and raised.value.code == "overloaded" and len(server.seen) == 3


def test_client_errors_are_not_retried_and_name_the_file(server: type[_Scripted]) -> None:
    body = _problem(422, "invalid_input", "mask is not binary") | {"file": "prompt_masks[0] m.png"}
    server.script = [(422, {}, body), HEALTHY]
    with PromptSegClient(server.url) as client, pytest.raises(APIError, match="not binary") as raised:
        client.model_info()
    assert raised.value.status == 422 and raised.value.file == "prompt_masks[0] m.png" and len(server.seen) == 1
    assert (raised.value.code, raised.value.detail) == ("invalid_input", "mask is not binary")


def test_a_body_that_is_no_problem_still_raises_a_typed_error(server: type[_Scripted]) -> None:
    server.script = [(502, {}, "upstream gone")]  # e.g. a proxy in front of the endpoint
    with PromptSegClient(server.url, retries=0) as client, pytest.raises(APIError) as raised:
        client.healthz()
    assert (raised.value.status, raised.value.code, raised.value.detail) == (502, "bad_gateway", '"upstream gone"')


def test_connection_errors_are_retried_until_the_endpoint_is_up() -> None:
    port, started = _free_port(), []  # nothing listens on the port for a second
    later = threading.Timer(1.0, lambda: started.append(_serve_on(port)))
    later.start()
    begin = time.monotonic()
    with PromptSegClient(f"http://127.0.0.1:{port}", retries=4, max_wait_s=2.0) as client:
        assert client.healthz().model_version == "3"  # refused at first, then retried after 0.5, 1, 2 s
    assert time.monotonic() - begin >= 1.0
    later.join()
    started[0].shutdown()
    with PromptSegClient(f"http://127.0.0.1:{_free_port()}", retries=1) as client, pytest.raises(httpx.ConnectError):
        client.healthz()  # nothing ever listens: the last connection error is raised


def test_the_timeout_is_the_callers(server: type[_Scripted]) -> None:
    server.script = [(200, {"Delay": "1.5"}, HEALTHY[2]) for _ in range(2)]
    with PromptSegClient(server.url, timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.healthz()
    with PromptSegClient(server.url, timeout=5.0) as client:
        assert client.healthz().model_version == "3"  # the same slow answer within a longer timeout


def test_segment_options_travel_as_the_request_models_form_fields(server: type[_Scripted], tmp_path: Path) -> None:
    query = tmp_path / "q.npy"
    query.write_bytes(b"not decoded by the scripted server")
    answer = {"request_id": "r", "model_name": "m", "model_version": "3", "n_prompts": 2, "labels": [1, 3]}
    server.script = [(200, {}, answer | {"ensemble": 2, "timings_ms": {}})]
    request = SegmentRequest(labels="1,3", window=(-160, 240), ensemble=2, uncertainty=True)
    with PromptSegClient(server.url) as client:
        response = client.segment_task("f" * 32, [query], request, threshold=0.3)
    assert response.labels == [1, 3] and response.ensemble == 2
    sent = server.bodies[0].decode(errors="replace")
    expected = request.model_copy(update={"task_id": "f" * 32, "threshold": 0.3}).form_fields()
    assert expected["window"] == "-160.0,240.0" and expected["uncertainty"] == "true"
    for name, value in expected.items():
        assert f'name="{name}"\r\n\r\n{value}\r\n' in sent, name
    assert SegmentRequest.model_validate(expected).form_fields() == expected  # the endpoint reads back the same


def test_invalid_segment_options_are_refused_before_anything_is_sent(server: type[_Scripted]) -> None:
    with PromptSegClient(server.url) as client:
        with pytest.raises(ValidationError, match="threshold"):
            client.segment_task("f" * 32, [], threshold=1.5)
        with pytest.raises(ValidationError, match="labels must be"):
            client.segment_task("f" * 32, [], labels=[0])
    assert server.seen == []
