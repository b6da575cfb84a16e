"""Contract 4, the HTTP API's request and response bodies (pydantic), shared by the Serve app and the client.

Routes (versioned under /v1, OpenAPI at /docs):
- POST /v1/tasks (multipart): `prompt_images`, `prompt_masks`, form fields `modality`, optional `window`
  ("low,high", a CT window) and `labels` → 201 `TaskInfo`. The task id is a content hash: the same prompts give
  the same id. GET /v1/tasks/{id} → `TaskInfo`; DELETE → 204.
- POST /v1/segment (multipart): 2D `queries` (PNG or NPY files) or one 3D `volume` (NIfTI, or a zip of one DICOM
  series) segmented slice by slice along `axis` (default: the DICOM slice axis, NIfTI's third voxel axis); against a
  registered `task_id` or inline `prompt_images` and `prompt_masks`. Form fields: `modality` (CT, MR, ...; 8-bit
  images are scaled whatever the modality; default the task's or the DICOM header's), `window`, `labels`,
  `threshold`, `ensemble` (K prompt subsets averaged), `uncertainty` (adds float16 NPY maps), `mask_format` (png or
  npy, for 2D), `volume_format` (nifti or npy for NIfTI input, dicom-seg or npy for DICOM input) → `SegmentResponse`.
- Masks in: {0, 1} or {0, 255} binary masks, or with `labels` ("1,3") label maps from which each wanted value is
  one structure, all segmented in the same call. Masks out: label maps holding those values (0 = background,
  a pixel goes to the most probable label above the threshold); a binary result (no `labels`) is label 1, written
  as {0, 255} in PNGs.
- GET /v1/model → `ModelInfo`; GET /healthz → `Health` (always open); GET /metrics → Prometheus text;
  POST /v1/reload → `ReloadInfo` (follow the alias to its current version).
- Auth: when the endpoint has an API key, every route but /healthz and the docs needs header `X-API-Key`
  (401 missing, 403 wrong). Bodies over the configured size get 413 before they are decoded; overload gets 503.
- Errors: a 4xx status with an `ErrorResponse` body naming the problem and the file; never a 500 for bad input.

The form fields of the two POST routes are `TaskRequest` and `SegmentRequest`: the endpoint validates the form into
them, the client and the CLI build them and send `form_fields()`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from promptseg.inference.errors import InvalidInput
from promptseg.inference.predictor import DEFAULT_MODALITY, DEFAULT_THRESHOLD

MAX_ENSEMBLE = 16
MAX_LABEL = 65535


def _comma_text(value: object) -> str | None:
    """A form field's comma string; values given as a list (in Python, or a repeated form field) are joined."""
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    text = "" if value is None else str(value).strip()
    return text or None


def _parse_labels(value: object) -> list[int] | None:
    """Label values from "1,3" (or a list of them): distinct whole numbers in 1..65535; None when empty."""
    text = _comma_text(value)
    if text is None:
        return None
    try:
        labels = [int(part) for part in text.split(",")]
    except ValueError:
        raise InvalidInput("labels", f"labels must be comma-separated whole numbers, got {text!r}") from None
    if len(set(labels)) != len(labels) or min(labels) < 1 or max(labels) > MAX_LABEL:
        raise InvalidInput("labels", f"labels must be distinct values in 1..{MAX_LABEL}, got {labels}")
    return labels


def _parse_window(value: object) -> tuple[float, float] | None:
    """A CT window from "low,high" (or a pair), low below high; None when empty."""
    text = _comma_text(value)
    if text is None:
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise InvalidInput("window", f"a window is 'low,high', got {text!r}") from None
    if not low < high:
        raise InvalidInput("window", f"the window's low must be below its high, got {low}, {high}")
    return low, high


Labels = Annotated[
    list[int] | None,
    BeforeValidator(_parse_labels),
    WithJsonSchema({"type": "string", "description": "label values, comma-separated", "examples": ["1,3"]}),
]
Window = Annotated[
    tuple[float, float] | None,
    BeforeValidator(_parse_window),
    WithJsonSchema({"type": "string", "description": "a CT window 'low,high'", "examples": ["-160,240"]}),
]


class FormRequest(BaseModel):
    """The form fields of a multipart route. A field validator raises `InvalidInput` naming its field; the endpoint
    answers it as `invalid_input`, any other validation error as `invalid_request`."""

    model_config = ConfigDict(extra="forbid")

    def form_fields(self) -> dict[str, str]:
        """The multipart form fields that carry this request: lists comma-joined, booleans lower-case, None left
        out."""
        fields = {}
        for name, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, list | tuple):
                value = ",".join(str(v) for v in value)
            fields[name] = str(value).lower() if isinstance(value, bool) else str(value)
        return fields


class TaskRequest(FormRequest):
    """POST /v1/tasks's fields: how the prompts are normalized and which label values of their masks to keep."""

    modality: str = DEFAULT_MODALITY
    window: Window = None
    labels: Labels = None


class SegmentRequest(FormRequest):
    """POST /v1/segment's fields (every part of the request but its files)."""

    task_id: str | None = None
    modality: str | None = None
    window: Window = None
    labels: Labels = None
    axis: int | None = Field(None, ge=0, le=2)
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0.0, lt=1.0)
    ensemble: int = Field(1, ge=1, le=MAX_ENSEMBLE)
    uncertainty: bool = False
    mask_format: Literal["png", "npy"] = "png"
    volume_format: Literal["nifti", "dicom-seg", "npy"] | None = None


class ErrorDetail(BaseModel):
    code: str
    message: str
    file: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str
    model_version: str


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str
    model_card: dict


class ReloadInfo(BaseModel):
    alias: str
    previous_version: str
    model_version: str
    changed: bool


class TaskInfo(BaseModel):
    task_id: str
    n_prompts: int
    modality: str
    labels: list[int]
    window: tuple[float, float] | None = None


class MaskResult(BaseModel):
    """One 2D query's label map (base64 of `mask_format` bytes) and, when asked, its uncertainty (float16 NPY,
    (H, W) for one label, (L, H, W) for several)."""

    query: str
    height: int
    width: int
    mask_format: str
    mask_base64: str
    foreground_fraction: dict[str, float]
    uncertainty_npy_base64: str | None = None


class VolumeResult(BaseModel):
    """A volume's label map on the input's grid (NIfTI, DICOM SEG or NPY bytes, base64) and its uncertainty."""

    volume: str
    shape: list[int]
    axis: int
    n_slices: int
    volume_format: str
    volume_base64: str
    foreground_fraction: dict[str, float]
    uncertainty_npy_base64: str | None = None


class SegmentResponse(BaseModel):
    request_id: str
    model_name: str
    model_version: str
    task_id: str | None = None
    n_prompts: int
    labels: list[int]
    ensemble: int
    masks: list[MaskResult] = []
    volume: VolumeResult | None = None
    timings_ms: dict[str, float]
