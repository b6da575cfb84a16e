"""The HTTP client against a real local HTTP server that answers from a script: retries on 503/429 honour
Retry-After (seconds or an HTTP date), give up after `retries`, and error bodies become typed `APIError`s."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from promptseg.serving.client import APIError, PromptSegClient

HEALTHY = (200, {}, {"status": "ok", "model_version": "3"})


class _Scripted(BaseHTTPRequestHandler):
    script: ClassVar[list[tuple[int, dict, dict]]] = []
    seen: ClassVar[list[float]] = []
    url: ClassVar[str] = ""

    def do_GET(self) -> None:
        status, headers, body = self.script.pop(0) if self.script else HEALTHY
        self.seen.append(time.monotonic())
        payload = json.dumps(body).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[type[_Scripted]]:
    _Scripted.script, _Scripted.seen = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Scripted.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield _Scripted
    httpd.shutdown()


def test_overload_answers_are_retried_after_the_servers_retry_after(server: type[_Scripted]) -> None:
    # 3 s ahead: the first retry's 1 s wait and the date's whole seconds leave at least ~1 s when the 429 comes
    in_three_seconds = format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    server.script = [
        (503, {"Retry-After": "1"}, {"error": {"code": "overloaded", "message": "busy"}}),
        (429, {"Retry-After": in_three_seconds}, {"error": {"code": "rate_limited", "message": "slow down"}}),
        HEALTHY,
    ]
    with PromptSegClient(server.url, retries=3) as client:
        assert client.healthz().model_version == "3"
    first, second, third = server.seen
    assert second - first >= 0.95  # waited the 1 s it was told
    assert third - second >= 0.5  # waited until the HTTP date


def test_retries_give_up_with_the_typed_error(server: type[_Scripted]) -> None:
    server.script = [(503, {"Retry-After": "0"}, {"error": {"code": "overloaded", "message": "busy"}})] * 3
    with PromptSegClient(server.url, retries=2) as client, pytest.raises(APIError) as raised:
        client.healthz()
    assert raised.value.status == 503 and raised.value.code == "overloaded" and len(server.seen) == 3


def test_client_errors_are_not_retried_and_name_the_file(server: type[_Scripted]) -> None:
    body = {"error": {"code": "invalid_input", "message": "mask is not binary", "file": "prompt_masks[0] m.png"}}
    server.script = [(422, {}, body), HEALTHY]
    with PromptSegClient(server.url) as client, pytest.raises(APIError, match="not binary") as raised:
        client.model_info()
    assert raised.value.status == 422 and raised.value.file == "prompt_masks[0] m.png" and len(server.seen) == 1
