"""A typed Python client (httpx) for the PromptSeg HTTP API. It needs httpx, pydantic, numpy and (for PNG masks)
Pillow only, all that the base install (`pip install promptseg-platform`) brings; never torch, ray or the serving
stack (the `platform` extra).

Prompt images, masks and queries are file paths or numpy arrays (sent as NPY files). A connection that cannot be
made (the endpoint starting or restarting) is retried with an exponential back-off, and overload answers (503, 429)
after the server's `Retry-After` (seconds or an HTTP date) or else the back-off, up to `retries` times and
`max_wait_s` per wait. `timeout` is the caller's: how long one call may wait for its answer (None: as long as it
takes, e.g. a long volume); connecting gives up after `CONNECT_TIMEOUT_S` and is retried. Any other error status
raises `APIError` with the status and the problem details' code, detail and file. Form fields are sent as the API
models build them (`TaskRequest`, `SegmentRequest`), so options the endpoint would refuse raise pydantic's
`ValidationError` before anything is sent. A long volume can run as a job instead: `submit_job`, then
`wait_for_job` polls until its result is ready.
"""

from __future__ import annotations

import base64
import contextlib
import io
import time
import zipfile
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import numpy as np
from pydantic import ValidationError

from promptseg.serving.api_models import (
    API_KEY_HEADER,
    Health,
    JobInfo,
    MaskResult,
    ModelInfo,
    Problem,
    ReloadInfo,
    SegmentRequest,
    SegmentResponse,
    TaskInfo,
    TaskList,
    TaskRequest,
    VolumeTaskRequest,
    status_problem_code,
)

RETRIED_STATUSES = (429, 503)
CONNECT_TIMEOUT_S = 10.0
ImageSource = Path | str | np.ndarray  # a PNG/NPY file, or an array sent as NPY


class APIError(Exception):
    """The endpoint answered with an error status (after any retries): its problem details' code, detail and
    file."""

    def __init__(self, status: int, code: str, detail: str, file: str | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {detail}" + (f" ({file})" if file else ""))
        self.status, self.code, self.detail, self.file = status, code, detail, file


def backoff_seconds(attempt: int, max_wait_s: float) -> float:
    """The wait before retry `attempt` (from 0) when the server named none: 0.5·2^attempt, at most `max_wait_s`."""
    return min(0.5 * 2**attempt, max_wait_s)


def retry_after_seconds(response: httpx.Response, attempt: int, max_wait_s: float) -> float:
    """How long to wait before retrying `response`: its Retry-After (delta seconds or HTTP date), else the
    back-off."""
    value = response.headers.get("retry-after", "").strip()
    wait = backoff_seconds(attempt, max_wait_s)
    if value.isdigit():
        wait = float(value)
    elif value:
        with contextlib.suppress(TypeError, ValueError):  # an unparseable date keeps the back-off
            wait = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
    return min(max(wait, 0.0), max_wait_s)


def _raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    status = response.status_code
    try:
        problem = Problem.model_validate(response.json())
    except (ValueError, ValidationError):  # not problem details: Ray Serve's proxy refusing overload, a proxy, ...
        raise APIError(status, status_problem_code(status), response.text[:200] or response.reason_phrase) from None
    raise APIError(status, problem.code, problem.detail, problem.file)


class PromptSegClient:
    """Typed calls to every route. `api_key` goes in the X-API-Key header of every request. A segment call takes a
    `SegmentRequest` or its fields as keyword options (`labels`, `threshold`, `ensemble`, `uncertainty`,
    `mask_format`, `volume_format`, `axis`, `modality`, `window`; options override the request's, None leaves the
    default)."""

    def __init__(
        self,
        base_url: str,
        timeout: float | None = None,
        retries: int = 3,
        max_wait_s: float = 30.0,
        api_key: str | None = None,
    ) -> None:
        headers = {API_KEY_HEADER: api_key} if api_key else {}
        limits = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S)
        self._http = httpx.Client(base_url=base_url, timeout=limits, headers=headers)
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
        """The endpoint's Prometheus text: every replica's metrics summed (as Ray's metrics agents last exported
        them)."""
        return self._request("GET", "/metrics", text=True)

    def reload(self) -> ReloadInfo:
        """Make the endpoint follow its alias to the version it points to now."""
        return ReloadInfo.model_validate(self._request("POST", "/v1/reload"))

    def create_task(
        self,
        prompt_images: Sequence[ImageSource],
        prompt_masks: Sequence[ImageSource],
        modality: str = "CT",
        labels: list[int] | None = None,
        window: tuple[float, float] | None = None,
        names: list[str] | None = None,
    ) -> TaskInfo:
        """Register prompt pairs once; segment against the returned task id."""
        files = _files(prompt_images=prompt_images, prompt_masks=prompt_masks)
        form = TaskRequest(modality=modality, labels=labels, window=window, names=names).form_fields()
        return TaskInfo.model_validate(self._request("POST", "/v1/tasks", files=files, data=form))

    def create_task_from_volume(self, volume: Path, label_volume: Path, request: VolumeTaskRequest) -> TaskInfo:
        """Register a task cut from an annotated volume: a scan and its label volume on the same grid (NIfTI files,
        DICOM series folders or zips, or a DICOM SEG file of the series)."""
        files = [("volume", volume_upload(Path(volume))), ("label_volume", volume_upload(Path(label_volume)))]
        answer = self._request("POST", "/v1/tasks/from-volume", files=files, data=request.form_fields())
        return TaskInfo.model_validate(answer)

    def list_tasks(self) -> list[TaskInfo]:
        """Every task registered with the endpoint."""
        return TaskList.model_validate(self._request("GET", "/v1/tasks")).tasks

    def get_task(self, task_id: str) -> TaskInfo:
        return TaskInfo.model_validate(self._request("GET", f"/v1/tasks/{task_id}"))

    def delete_task(self, task_id: str) -> None:
        self._request("DELETE", f"/v1/tasks/{task_id}")

    def segment(
        self,
        prompt_images: Sequence[ImageSource],
        prompt_masks: Sequence[ImageSource],
        queries: Sequence[ImageSource],
        request: SegmentRequest | None = None,
        **options: object,
    ) -> SegmentResponse:
        """Segment 2D queries against inline prompt pairs."""
        files = _files(prompt_images=prompt_images, prompt_masks=prompt_masks, queries=queries)
        return self._segment(files, request, options)

    def segment_task(
        self, task_id: str, queries: Sequence[ImageSource], request: SegmentRequest | None = None, **options: object
    ) -> SegmentResponse:
        """Segment 2D queries against a registered task (its modality unless `modality` is given)."""
        return self._segment(_files(queries=queries), request, options | {"task_id": task_id})

    def segment_volume(
        self,
        volume: Path,
        task_id: str | None = None,
        prompt_images: Sequence[ImageSource] | None = None,
        prompt_masks: Sequence[ImageSource] | None = None,
        request: SegmentRequest | None = None,
        **options: object,
    ) -> SegmentResponse:
        """Segment every slice of a NIfTI file or a DICOM series (a folder, zipped here, or a zip) against a task
        or inline prompts; the result comes back on the volume's grid."""
        files = _volume_files(volume, prompt_images, prompt_masks)
        return self._segment(files, request, options | ({"task_id": task_id} if task_id else {}))

    def submit_job(
        self,
        volume: Path,
        task_id: str | None = None,
        prompt_images: Sequence[ImageSource] | None = None,
        prompt_masks: Sequence[ImageSource] | None = None,
        request: SegmentRequest | None = None,
        **options: object,
    ) -> JobInfo:
        """`segment_volume` as a job: the endpoint answers at once with the queued job; `wait_for_job` fetches the
        result."""
        files = _volume_files(volume, prompt_images, prompt_masks)
        form = _segment_form(request, options | ({"task_id": task_id} if task_id else {}))
        return JobInfo.model_validate(self._request("POST", "/v1/jobs", files=files, data=form))

    def job(self, job_id: str) -> JobInfo:
        """A job's state (queued, running, succeeded, failed with its problem, cancelled)."""
        return JobInfo.model_validate(self._request("GET", f"/v1/jobs/{job_id}"))

    def job_result(self, job_id: str) -> SegmentResponse:
        """A succeeded job's result; `APIError` 409 while it has none."""
        return SegmentResponse.model_validate(self._request("GET", f"/v1/jobs/{job_id}/result"))

    def cancel_job(self, job_id: str) -> JobInfo | None:
        """Cancel an unfinished job (→ its state, cancelled), or delete a finished one and its result (→ None)."""
        found = self._request("DELETE", f"/v1/jobs/{job_id}")
        return None if found is None else JobInfo.model_validate(found)

    def wait_for_job(self, job_id: str, poll_s: float = 2.0, timeout_s: float | None = None) -> SegmentResponse:
        """Poll the job every `poll_s` until it finishes and return its result; a failed or cancelled job raises
        `APIError` (its problem, or 409 `job_cancelled`), and `TimeoutError` after `timeout_s` (None: no limit)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (info := self.job(job_id)).state in ("queued", "running"):
            if deadline is not None and time.monotonic() + poll_s > deadline:
                raise TimeoutError(f"job {job_id} is still {info.state} after {timeout_s} s")
            time.sleep(poll_s)
        if info.state == "failed" and info.error is not None:
            raise APIError(info.error.status, info.error.code, info.error.detail, info.error.file)
        if info.state == "cancelled":
            raise APIError(409, "job_cancelled", f"job {job_id} was cancelled")
        return self.job_result(job_id)

    def _segment(self, files: list, request: SegmentRequest | None, options: dict[str, object]) -> SegmentResponse:
        form = _segment_form(request, options)
        return SegmentResponse.model_validate(self._request("POST", "/v1/segment", files=files, data=form))

    def _request(self, method: str, path: str, *, text: bool = False, **kwargs: object) -> dict | str | None:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout):  # nothing was sent: safe to send again
                if last:
                    raise
                time.sleep(backoff_seconds(attempt, self.max_wait_s))
                continue
            if response.status_code not in RETRIED_STATUSES or last:
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


def _segment_form(request: SegmentRequest | None, options: dict[str, object]) -> dict[str, str]:
    """The form fields of a segment request: the request's fields, overridden by the options that are not None."""
    given = {name: value for name, value in options.items() if value is not None}  # None keeps the default
    fields = (request.model_dump(exclude_unset=True) if request else {}) | given
    return SegmentRequest.model_validate(fields).form_fields()


def _volume_files(
    volume: Path, prompt_images: Sequence[ImageSource] | None, prompt_masks: Sequence[ImageSource] | None
) -> list[tuple[str, tuple[str, bytes]]]:
    files = [("volume", volume_upload(Path(volume)))]
    return files + _files(prompt_images=prompt_images or (), prompt_masks=prompt_masks or ())


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _files(**fields: Sequence[ImageSource]) -> list[tuple[str, tuple[str, bytes]]]:
    """Multipart files: a path as its file, an array as `<field>_<index>.npy`."""
    return [
        (field, (f"{field}_{index}.npy", _npy_bytes(source)))
        if isinstance(source, np.ndarray)
        else (field, (Path(source).name, Path(source).read_bytes()))
        for field, sources in fields.items()
        for index, source in enumerate(sources)
    ]


def decode_mask(result: MaskResult, labels: list[int]) -> np.ndarray:
    """A query's label map (values `labels`, 0 = background; a binary result is {0, 1}). NPY masks need numpy
    only; PNG masks need Pillow (installed with the platform, not with the `client` extra)."""
    data = base64.b64decode(result.mask_base64)
    if result.mask_format == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError("PNG masks need Pillow: install it, or segment with mask_format='npy'") from error
    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image)
    return (array > 0).astype(np.uint8) if labels == [1] else array


def decode_uncertainty(npy_base64: str) -> np.ndarray:
    """An uncertainty map (float16, bits) from a response."""
    return np.load(io.BytesIO(base64.b64decode(npy_base64)), allow_pickle=False)
