"""Admission without a server: the gateway middleware driven in process with hand-made ASGI messages. A body is read
whole within its deadline (408 after it) before the route runs; work routes take one of the replica's work slots,
and a request that would wait behind too many others gets 503 with a Retry-After, while routes that do no work
never wait. The request's time budget stops work between steps."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from promptseg.inference.budget import Budget, Limits, OverBudget
from promptseg.serving import gateway
from promptseg.serving.admission import SPOOL_BYTES

Message = dict[str, Any]


def _scope(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": [], "root_path": ""}


def _body(chunks: list[bytes], delay_s: float = 0.0) -> Callable[[], Awaitable[Message]]:
    """A client sending `chunks`, `delay_s` apart, then waiting (as a connection left open does)."""
    pending = list(chunks)

    async def receive() -> Message:
        if not pending:
            await asyncio.sleep(3600)
        await asyncio.sleep(delay_s)
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    return receive


class _Route:
    """An app that reads the whole body it is handed, optionally waits for `release`, and answers 200."""

    def __init__(self, release: asyncio.Event | None = None) -> None:
        self.bodies: list[bytes] = []
        self.release = release

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[Message]], send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        if self.release is not None:
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def _call(app: Any, scope: dict, receive: Callable[[], Awaitable[Message]]) -> tuple[int, dict, bytes]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


@pytest.fixture
def configured() -> Callable[..., None]:
    def configure(**fields: Any) -> None:
        gateway.configure(gateway.GatewayConfig(**fields))

    yield configure
    gateway.configure(gateway.GatewayConfig())


def test_the_route_gets_the_whole_body_replayed(configured: Callable[..., None]) -> None:
    configured(max_body_bytes=8 << 20)
    chunks = [bytes([i]) * 700_000 for i in range(4)]  # 2.8 MB: past the in-memory spool, onto disk
    route = _Route()
    status, _, _ = asyncio.run(_call(gateway.Gateway(route), _scope("POST", "/v1/segment"), _body(chunks)))
    assert status == 200 and route.bodies == [b"".join(chunks)] and len(route.bodies[0]) > SPOOL_BYTES


def test_a_body_slower_than_its_deadline_gets_408_and_never_reaches_the_route(configured: Callable[..., None]) -> None:
    configured(body_timeout_s=0.3)
    route = _Route()
    start = time.monotonic()
    status, headers, body = asyncio.run(
        _call(gateway.Gateway(route), _scope("POST", "/v1/segment"), _body([b"x"] * 100, delay_s=0.05))
    )
    assert (status, json.loads(body)["code"]) == (408, "body_timeout")
    assert headers[b"content-type"] == b"application/problem+json"
    assert route.bodies == [] and time.monotonic() - start < 2


def test_a_streamed_body_past_the_limit_gets_413(configured: Callable[..., None]) -> None:
    configured(max_body_bytes=1000)
    status, _, body = asyncio.run(
        _call(gateway.Gateway(_Route()), _scope("POST", "/v1/tasks"), _body([bytes(600), bytes(600)]))
    )
    assert (status, json.loads(body)["code"]) == (413, "body_too_large")


def test_work_waits_for_a_slot_and_is_refused_past_the_wait_while_other_routes_pass(
    configured: Callable[..., None],
) -> None:
    configured(work_slots=1, max_waiting=1, retry_after_s=7)

    async def scenario() -> tuple[list[int], tuple[int, dict, bytes], tuple[int, dict, bytes], list[int]]:
        release = asyncio.Event()
        app = gateway.Gateway(_Route(release))
        work = [asyncio.create_task(_call(app, _scope("POST", "/v1/segment"), _body([b"q"]))) for _ in range(2)]
        await asyncio.sleep(0.1)  # one works, one waits
        refused = await _call(app, _scope("POST", "/v1/jobs"), _body([b"q"]))
        slots = gateway.work_slots()
        busy = [slots.busy, slots.waiting]
        passed = await asyncio.wait_for(_call(gateway.Gateway(_Route()), _scope("GET", "/v1/jobs/x"), _body([b""])), 1)
        release.set()
        return [status for status, _, _ in await asyncio.gather(*work)], refused, passed, busy

    statuses, (status, headers, body), passed, busy = asyncio.run(scenario())
    assert busy == [1, 1] and statuses == [200, 200] and passed[0] == 200
    assert (status, json.loads(body)["code"], headers[b"retry-after"]) == (503, "overloaded", b"7")
    assert headers[b"content-type"] == b"application/problem+json"


def test_the_time_budget_stops_work_between_steps() -> None:
    budget = Budget(Limits(max_seconds=0.05))
    budget.check_time("volume")  # within the budget
    time.sleep(0.1)
    with pytest.raises(OverBudget, match=r"time budget of 0\.05 s") as raised:
        budget.check_time("volume")
    assert raised.value.file == "volume"
