"""A typed Python client (httpx) for the PromptSeg HTTP API.

Overload answers (503, 429) are retried, waiting what the server's `Retry-After` says (seconds or an HTTP date) or
else an exponential back-off, up to `retries` times and `max_wait_s` per wait. Any other error status raises
`APIError` carrying the status and the error body's code, message and file. Form fields are sent as the API models
build them (`TaskRequest`, `SegmentRequest`), so options the endpoint would refuse raise pydantic's
`ValidationError` before anything is sent.
"""

from __future__ import annotations

import base64
import contextlib
import io
import time
import zipfile
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import numpy as np
from pydantic import ValidationError

from promptseg.inference.image_io import decode_labels
from promptseg.serving.api_models import (
    ErrorResponse,
    Health,
    MaskResult,
    ModelInfo,
    ReloadInfo,
    SegmentRequest,
    SegmentResponse,
    TaskInfo,
    TaskRequest,
)

RETRIED_STATUSES = (429, 503)
API_KEY_HEADER = "X-API-Key"


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
    """Typed calls to every route. `api_key` goes in the X-API-Key header of every request. A segment call takes a
    `SegmentRequest` or its fields as keyword options (`labels`, `threshold`, `ensemble`, `uncertainty`,
    `mask_format`, `volume_format`, `axis`, `modality`, `window`; options override the request's, None leaves the
    default)."""

    def __init__(
        self,
        base_url: str,
        timeout: float = 120.0,
        retries: int = 3,
        max_wait_s: float = 30.0,
        api_key: str | None = None,
    ) -> None:
        headers = {API_KEY_HEADER: api_key} if api_key else {}
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers)
        self.retries, self.max_wait_s = retries, max_wait_s

    def __enter__(self) -> PromptSegClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def healthz(self) -> Health:
        return Health.model_validate(self._request("GET", "/healthz"))

    def model_info(self) -> ModelInfo:
        return ModelInfo.model_validate(self._request("GET", "/v1/model"))

    def metrics(self) -> str:
        """The endpoint's Prometheus text (the replica that answered)."""
        return self._request("GET", "/metrics", text=True)

    def reload(self) -> ReloadInfo:
        """Make the endpoint follow its alias to the version it points to now."""
        return ReloadInfo.model_validate(self._request("POST", "/v1/reload"))

    def create_task(
        self,
        prompt_images: list[Path],
        prompt_masks: list[Path],
        modality: str = "CT",
        labels: list[int] | None = None,
        window: tuple[float, float] | None = None,
    ) -> TaskInfo:
        """Register prompt pairs once; segment against the returned task id."""
        files = _files(prompt_images=prompt_images, prompt_masks=prompt_masks)
        form = TaskRequest(modality=modality, labels=labels, window=window).form_fields()
        return TaskInfo.model_validate(self._request("POST", "/v1/tasks", files=files, data=form))

    def get_task(self, task_id: str) -> TaskInfo:
        return TaskInfo.model_validate(self._request("GET", f"/v1/tasks/{task_id}"))

    def delete_task(self, task_id: str) -> None:
        self._request("DELETE", f"/v1/tasks/{task_id}")

    def segment(
        self,
        prompt_images: list[Path],
        prompt_masks: list[Path],
        queries: list[Path],
        request: SegmentRequest | None = None,
        **options: object,
    ) -> SegmentResponse:
        """Segment 2D queries against inline prompt pairs."""
        files = _files(prompt_images=prompt_images, prompt_masks=prompt_masks, queries=queries)
        return self._segment(files, request, options)

    def segment_task(
        self, task_id: str, queries: list[Path], request: SegmentRequest | None = None, **options: object
    ) -> SegmentResponse:
        """Segment 2D queries against a registered task (its modality unless `modality` is given)."""
        return self._segment(_files(queries=queries), request, options | {"task_id": task_id})

    def segment_volume(
        self,
        volume: Path,
        task_id: str | None = None,
        prompt_images: list[Path] | None = None,
        prompt_masks: list[Path] | None = None,
        request: SegmentRequest | None = None,
        **options: object,
    ) -> SegmentResponse:
        """Segment every slice of a NIfTI file or a DICOM series (a folder, zipped here, or a zip) against a task
        or inline prompts; the result comes back on the volume's grid."""
        files = [("volume", volume_upload(Path(volume)))]
        files += _files(prompt_images=prompt_images or [], prompt_masks=prompt_masks or [])
        return self._segment(files, request, options | ({"task_id": task_id} if task_id else {}))

    def _segment(self, files: list, request: SegmentRequest | None, options: dict[str, object]) -> SegmentResponse:
        given = {name: value for name, value in options.items() if value is not None}  # None keeps the default
        fields = (request.model_dump(exclude_unset=True) if request else {}) | given
        form = SegmentRequest.model_validate(fields).form_fields()
        return SegmentResponse.model_validate(self._request("POST", "/v1/segment", files=files, data=form))

    def _request(self, method: str, path: str, *, text: bool = False, **kwargs: object) -> dict | str | None:
        for attempt in range(self.retries + 1):
            response = self._http.request(method, path, **kwargs)
            if response.status_code not in RETRIED_STATUSES or attempt == self.retries:
                break
            time.sleep(retry_after_seconds(response, attempt, self.max_wait_s))
        _raise_for_error(response)
        if text:
            return response.text
        return response.json() if response.content else None


def volume_upload(path: Path) -> tuple[str, bytes]:
    """(file name, bytes) of a NIfTI file or zip as is, or of a DICOM folder zipped in memory."""
    if not path.is_dir():
        return path.name, path.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            archive.write(file, file.relative_to(path).as_posix())
    return f"{path.name}.zip", buffer.getvalue()


def _files(**fields: list[Path]) -> list[tuple[str, tuple[str, bytes]]]:
    return [(field, (Path(p).name, Path(p).read_bytes())) for field, paths in fields.items() for p in paths]


def decode_mask(result: MaskResult, labels: list[int]) -> np.ndarray:
    """A query's label map (values `labels`, 0 = background; a binary result is {0, 1})."""
    return decode_labels(base64.b64decode(result.mask_base64), labels)


def decode_uncertainty(npy_base64: str) -> np.ndarray:
    """An uncertainty map (float16, bits) from a response."""
    return np.load(io.BytesIO(base64.b64decode(npy_base64)), allow_pickle=False)
