"""Who gets to work, and when: a request's body is read whole, within a deadline, before the request may take one
of the replica's work slots, so slow uploads hold a connection but never a slot; a request that would wait for a
slot behind too many others is refused at once.

Ray Serve admits up to `max_ongoing_requests` requests to a replica and streams each body to it as the client sends
it. Only `work_slots` of them decode and segment at once (`WorkSlots`); the others wait, up to `max_waiting`, and
beyond that get 503 `overloaded` with a Retry-After. A body that does not arrive within `body_timeout_s` gets 408
`body_timeout` (`read_body`); it is spooled to an owner-only temporary file past 1 MiB, so waiting bodies do not
pile up in memory. GET routes (health, readiness, job state, metrics) take no slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Any

WORK_ROUTES = frozenset({"/v1/segment", "/v1/tasks", "/v1/tasks/from-volume", "/v1/jobs"})
SPOOL_BYTES = 1 << 20
REPLAY_CHUNK = 1 << 20

Receive = Callable[[], Awaitable[dict[str, Any]]]


class BodyTooLarge(Exception):
    """The body streamed in past the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request bodies are limited to {limit} bytes")


class BodyTimeout(Exception):
    """The body did not arrive within the deadline."""

    def __init__(self, seconds: float, received: int) -> None:
        super().__init__(f"the request body did not arrive within {seconds:g} s ({received} bytes received)")


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


class Overloaded(Exception):
    """Every work slot is taken and too many requests wait for one."""

    def __init__(self, slots: int, waiting: int) -> None:
        super().__init__(f"all {slots} work slots of this replica are busy and {waiting} requests wait; retry later")


def needs_slot(method: str, path: str) -> bool:
    """Whether a request decodes or segments (and so takes a work slot)."""
    return method == "POST" and path in WORK_ROUTES


@dataclass
class Body:
    """A request body read whole: its size and a file holding it (in memory up to `SPOOL_BYTES`)."""

    size: int
    file: IO[bytes]

    def replay(self, receive: Receive) -> Receive:
        """An ASGI `receive` that hands the app the body in chunks, then listens to the client (for disconnects)."""
        self.file.seek(0)
        done = False

        async def replayed() -> dict[str, Any]:
            nonlocal done
            if done:
                return await receive()
            chunk = self.file.read(REPLAY_CHUNK)
            done = self.file.tell() >= self.size
            return {"type": "http.request", "body": chunk, "more_body": not done}

        return replayed


async def read_body(receive: Receive, limit: int, timeout_s: float) -> Body:
    """The whole body within `timeout_s` (`BodyTimeout`), cut off past `limit` bytes (`BodyTooLarge`)."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - handed to the caller, who closes it
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(limit)
                spool.write(chunk)
                if not message.get("more_body", False):
                    return Body(size, spool)
    except TimeoutError:
        spool.close()
        raise BodyTimeout(timeout_s, size) from None
    except BaseException:
        spool.close()
        raise


class WorkSlots:
    """`slots` requests work at once; up to `max_waiting` more wait for a slot, in arrival order."""

    def __init__(self, slots: int, max_waiting: int) -> None:
        self.slots, self.max_waiting = slots, max_waiting
        self.busy = self.waiting = 0
        self._free = asyncio.Semaphore(slots)

    @property
    def ready(self) -> bool:
        """Whether a new request would be taken (a slot is free or it may wait)."""
        return self.busy < self.slots or self.waiting < self.max_waiting

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """A slot for the enclosed work; `Overloaded` at once when none is free and the wait is full."""
        if not self.ready:
            raise Overloaded(self.slots, self.waiting)
        self.waiting += 1
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1
            self._free.release()
