"""A typed Python client (httpx) for the PromptSeg HTTP API.

Overload answers (503, 429) are retried, waiting what the server's `Retry-After` says (seconds or an HTTP date) or
else an exponential back-off, up to `retries` times and `max_wait_s` per wait. Any other error status raises
`APIError` carrying the status and the error body's code, message and file.
"""

from __future__ import annotations

import base64
import contextlib
import io
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from pydantic import ValidationError

from promptseg.api_models import ErrorResponse, Health, ModelInfo, SegmentResponse, TaskInfo

RETRIED_STATUSES = (429, 503)


class APIError(Exception):
    """The endpoint answered with an error status (after any retries)."""

    def __init__(self, status: int, code: str, message: str, file: str | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}" + (f" ({file})" if file else ""))
        self.status, self.code, self.message, self.file = status, code, message, file


def retry_after_seconds(response: httpx.Response, attempt: int, max_wait_s: float) -> float:
    """How long to wait before retrying `response`: its Retry-After (delta seconds or HTTP date), else 0.5·2^attempt."""
    value = response.headers.get("retry-after", "").strip()
    wait = 0.5 * 2**attempt
    if value.isdigit():
        wait = float(value)
    elif value:
        with contextlib.suppress(TypeError, ValueError):  # an unparseable date keeps the back-off
            wait = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
    return min(max(wait, 0.0), max_wait_s)


def _raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = ErrorResponse.model_validate(response.json()).error
    except (ValueError, ValidationError):
        raise APIError(response.status_code, "http_error", response.text[:200] or response.reason_phrase) from None
    raise APIError(response.status_code, detail.code, detail.message, detail.file)


class PromptSegClient:
    def __init__(self, base_url: str, timeout: float = 120.0, retries: int = 3, max_wait_s: float = 30.0) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout)
        self.retries, self.max_wait_s = retries, max_wait_s

    def __enter__(self) -> PromptSegClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def healthz(self) -> Health:
        return Health.model_validate(self._request("GET", "/healthz"))

    def model_info(self) -> ModelInfo:
        return ModelInfo.model_validate(self._request("GET", "/v1/model"))

    def create_task(self, prompt_images: list[Path], prompt_masks: list[Path], modality: str = "CT") -> TaskInfo:
        """Register prompt pairs once; segment against the returned task id."""
        files = _files(prompt_images=prompt_images, prompt_masks=prompt_masks)
        return TaskInfo.model_validate(self._request("POST", "/v1/tasks", files=files, data={"modality": modality}))

    def get_task(self, task_id: str) -> TaskInfo:
        return TaskInfo.model_validate(self._request("GET", f"/v1/tasks/{task_id}"))

    def delete_task(self, task_id: str) -> None:
        self._request("DELETE", f"/v1/tasks/{task_id}")

    def segment(
        self,
        prompt_images: list[Path],
        prompt_masks: list[Path],
        queries: list[Path],
        modality: str = "CT",
        threshold: float = 0.5,
    ) -> SegmentResponse:
        """Segment queries against inline prompt pairs."""
        files = _files(prompt_images=prompt_images, prompt_masks=prompt_masks, queries=queries)
        form = {"modality": modality, "threshold": str(threshold)}
        return SegmentResponse.model_validate(self._request("POST", "/v1/segment", files=files, data=form))

    def segment_task(
        self, task_id: str, queries: list[Path], modality: str | None = None, threshold: float = 0.5
    ) -> SegmentResponse:
        """Segment queries against a registered task (its modality unless `modality` is given)."""
        form = {"task_id": task_id, "threshold": str(threshold)} | ({"modality": modality} if modality else {})
        body = self._request("POST", "/v1/segment", files=_files(queries=queries), data=form)
        return SegmentResponse.model_validate(body)

    def _request(self, method: str, path: str, **kwargs: object) -> dict | None:
        for attempt in range(self.retries + 1):
            response = self._http.request(method, path, **kwargs)
            if response.status_code not in RETRIED_STATUSES or attempt == self.retries:
                break
            time.sleep(retry_after_seconds(response, attempt, self.max_wait_s))
        _raise_for_error(response)
        return response.json() if response.content else None


def _files(**fields: list[Path]) -> list[tuple[str, tuple[str, bytes]]]:
    return [(field, (Path(p).name, Path(p).read_bytes())) for field, paths in fields.items() for p in paths]


def decode_mask(png_base64: str) -> np.ndarray:
    """A {0, 1} mask from a response's base64 PNG."""
    return (np.asarray(Image.open(io.BytesIO(base64.b64decode(png_base64)))) > 0).astype(np.uint8)
