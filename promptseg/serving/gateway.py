"""What happens to every HTTP request of the endpoint around its route: request id, API key, body-size limit, the
body read within its deadline, a work slot, audit log line and metrics (one ASGI middleware, `Gateway`).

- Request id: Ray Serve's id of the request (the one its proxy returns in the `X-Request-ID` header and writes to
  its logs), in `scope["state"]["request_id"]` for the route; outside Serve a fresh one, added as that header.
- API key: when a key is configured, every route but `OPEN_PATHS` needs header `X-API-Key`; the SHA-256 of the
  given key is compared in constant time with the configured key's (the replica only ever holds the hash).
  Missing → 401, wrong → 403, before the body is read.
- Body limit: a declared `Content-Length` over the limit gets 413 before any byte is read; a body streamed without
  one is counted as it arrives and cut off with 413 at the limit.
- Admission (promptseg.serving.admission): the body is read whole before the route runs; one that does not arrive
  within `body_timeout_s` gets 408. Only then does a request that decodes or segments take a work slot; one that
  would wait behind `max_waiting` others gets 503 `overloaded` with a Retry-After. Nothing else waits for a slot.
- Refusals are problem details (`api_models.Problem`, `application/problem+json`), like every error answer.
- Audit: one JSON line per request (time, request id, method, route template, status, request and response bytes,
  duration, and what the route adds in `scope["state"]["audit"]`: task id, number of queries, model version,
  error code). File names, headers, client addresses and pixel data are never written: they may identify a patient.
- Metrics: request counts and latencies by route and status, query slices segmented, requests per batch,
  task-encoding cache hits and misses and the model version served, as Ray Serve metrics (`ray.serve.metrics`):
  Serve tags each value with its application, deployment and replica, and Ray's metrics agent on every node
  exports them (`ray_promptseg_*`) for Prometheus; GET /metrics sums them over the replicas
  (promptseg.serving.cluster_metrics).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.serve import metrics
from ray.serve.context import _get_serve_request_context

from promptseg.serving.admission import (
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    Overloaded,
    WorkSlots,
    needs_slot,
    read_body,
)
from promptseg.serving.api_models import API_KEY_HEADER, PROBLEM_MEDIA_TYPE, Problem

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/openapi.json", "/docs/oauth2-redirect"})


class ServeMetric:
    """A Ray Serve metric made on first use: in a replica that is after Serve set the replica's context, so Serve
    tags every value with its application, deployment and replica (a metric made at import would lack them).
    `labels(...)` binds values to `tag_keys` in order."""

    def __init__(
        self,
        kind: type[metrics.Counter | metrics.Gauge | metrics.Histogram],
        name: str,
        description: str,
        tag_keys: tuple[str, ...] = (),
        **options: Any,
    ) -> None:
        self.kind, self.name, self.description, self.tag_keys, self.options = kind, name, description, tag_keys, options

    @functools.cached_property
    def metric(self) -> metrics.Counter | metrics.Gauge | metrics.Histogram:
        return self.kind(self.name, description=self.description, tag_keys=self.tag_keys or None, **self.options)

    def labels(self, *values: str) -> _Tagged:
        return _Tagged(self, dict(zip(self.tag_keys, values, strict=True)))

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.metric.inc(value, tags)

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.metric.observe(value, tags)

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.metric.set(value, tags)


@dataclass(frozen=True)
class _Tagged:
    metric: ServeMetric
    tags: dict[str, str]

    def inc(self, value: float = 1.0) -> None:
        self.metric.inc(value, self.tags)

    def observe(self, value: float) -> None:
        self.metric.observe(value, self.tags)

    def set(self, value: float) -> None:
        self.metric.set(value, self.tags)


REQUESTS = ServeMetric(metrics.Counter, "promptseg_requests", "HTTP requests answered", ("route", "status"))
LATENCY = ServeMetric(
    metrics.Histogram,
    "promptseg_request_seconds",
    "HTTP request latency",
    ("route",),
    boundaries=[0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30],
)
QUERIES = ServeMetric(metrics.Counter, "promptseg_query_slices", "Query slices segmented")
BATCH = ServeMetric(
    metrics.Histogram,
    "promptseg_batch_requests",
    "Requests served together by one serve.batch call",
    boundaries=[1, 2, 4, 8, 16, 32],
)
CACHE = ServeMetric(metrics.Counter, "promptseg_task_cache", "Task-encoding cache lookups", ("result",))
MODEL = ServeMetric(
    metrics.Gauge, "promptseg_model_info", "Replicas serving this model version (1 per replica)", ("name", "version")
)
BATCHED = ServeMetric(metrics.Counter, "promptseg_batched_requests", "Requests served by serve.batch calls")
METRICS = (REQUESTS, LATENCY, QUERIES, BATCH, BATCHED, CACHE, MODEL)


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True)
class GatewayConfig:
    max_body_bytes: int = 256 << 20
    api_key_sha256: str | None = None
    audit_dir: Path | None = None
    body_timeout_s: float = 120.0
    work_slots: int = 8
    max_waiting: int = 16
    retry_after_s: int = 5


def _header(scope: dict, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


async def _send_problem(
    send: Any, request_id: str, status: int, code: str, detail: str, retry_after_s: int | None = None
) -> None:
    body = Problem.of(status, code, detail, request_id=request_id).model_dump_json(exclude_none=True).encode()
    headers = [(b"content-type", PROBLEM_MEDIA_TYPE.encode())]
    if retry_after_s is not None:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_config = GatewayConfig()
_slots: WorkSlots | None = None


def configure(config: GatewayConfig) -> None:
    """Set this process's gateway settings (a replica calls it at start, after the app was built)."""
    global _config, _slots
    _config, _slots = config, None


def current_config() -> GatewayConfig:
    return _config


def work_slots() -> WorkSlots:
    """This process's work slots (made on first use, in the event loop that serves requests)."""
    global _slots
    if _slots is None:
        _slots = WorkSlots(_config.work_slots, _config.max_waiting)
    return _slots


class Gateway:
    """ASGI middleware reading this process's `configure`d settings on every request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    @property
    def config(self) -> GatewayConfig:
        return _config

    def _denied(self, scope: dict) -> tuple[int, str, str] | None:
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if self.config.api_key_sha256 is None or path in OPEN_PATHS:
            return None
        given = _header(scope, API_KEY_HEADER.lower().encode())
        if given is None:
            return 401, "missing_api_key", f"this endpoint needs an {API_KEY_HEADER} header"
        if not hmac.compare_digest(hashlib.sha256(given).hexdigest(), self.config.api_key_sha256):
            return 403, "wrong_api_key", f"the {API_KEY_HEADER} header does not match"
        return None

    def _too_large(self, scope: dict) -> bool:
        declared = _header(scope, b"content-length")
        return declared is not None and declared.isdigit() and int(declared) > self.config.max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        serve_id = _get_serve_request_context().request_id
        request_id = serve_id or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"], state["audit"] = request_id, {}
        outcome = {"status": 500, "request_bytes": 0, "response_bytes": 0}

        async def tagged_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
                if not serve_id:
                    message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                outcome["response_bytes"] += len(message.get("body", b""))
            await send(message)

        config = self.config
        too_large = 413, "body_too_large", f"request bodies are limited to {config.max_body_bytes} bytes"
        refusal = self._denied(scope)
        if refusal is None and self._too_large(scope):
            refusal = too_large
        try:
            if refusal is not None:
                await _send_problem(tagged_send, request_id, *refusal)
                return
            body = await read_body(receive, config.max_body_bytes, config.body_timeout_s)
            outcome["request_bytes"] = body.size
            with body.file:
                path = scope["path"].removeprefix(scope.get("root_path", ""))
                slot = work_slots().hold() if needs_slot(scope["method"], path) else contextlib.nullcontext()
                async with slot:
                    await self.app(scope, body.replay(receive), tagged_send)
        except BodyTooLarge:
            await _send_problem(tagged_send, request_id, *too_large)
        except BodyTimeout as late:
            await _send_problem(tagged_send, request_id, 408, "body_timeout", str(late))
        except ClientGone:
            outcome["status"] = 499  # nginx's "client closed request": nobody is left to answer
        except Overloaded as busy:
            await _send_problem(tagged_send, request_id, 503, "overloaded", str(busy), config.retry_after_s)
        finally:
            self._record(scope, outcome, time.perf_counter() - start)

    def _record(self, scope: dict, outcome: dict, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "/other"
        REQUESTS.labels(route, str(outcome["status"])).inc()
        LATENCY.labels(route).observe(seconds)
        if self.config.audit_dir is None:
            return
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "request_id": scope["state"]["request_id"],
            "method": scope["method"],
            "route": route,
            **outcome,
            "duration_ms": round(1e3 * seconds, 2),
            **scope["state"]["audit"],
        }
        self.config.audit_dir.mkdir(parents=True, exist_ok=True)
        path = self.config.audit_dir / f"audit-{time.strftime('%Y%m%d', time.gmtime())}.jsonl"
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, (json.dumps(line) + "\n").encode())
        finally:
            os.close(descriptor)
