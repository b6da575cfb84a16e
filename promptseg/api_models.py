"""Contract 4, the HTTP API's request and response bodies (pydantic), shared by the Serve app and the client.

Routes (versioned under /v1, OpenAPI at /docs):
- POST /v1/tasks (multipart): `prompt_images`, `prompt_masks`, form field `modality` → 201 `TaskInfo` (the task
  id is a content hash: the same prompts give the same id). GET /v1/tasks/{id} → `TaskInfo`; DELETE → 204.
- POST /v1/segment (multipart): `queries` (PNG or NPY files) against a registered `task_id` (form field) or inline
  `prompt_images` and `prompt_masks`, form fields `modality` (CT, MR, ...; 8-bit images are scaled whatever the
  modality; default the task's) and `threshold` → `SegmentResponse`.
  Prompt masks are {0, 1} or {0, 255}; output masks are PNGs with values {0, 255}, base64-encoded, one per query.
- GET /v1/model → `ModelInfo`; GET /healthz → `Health`.
- Errors: a 4xx status with an `ErrorResponse` body naming the problem and the file; never a 500 for bad input.
"""

from __future__ import annotations

from pydantic import BaseModel


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


class TaskInfo(BaseModel):
    task_id: str
    n_prompts: int
    modality: str


class MaskResult(BaseModel):
    query: str
    height: int
    width: int
    foreground_fraction: float
    mask_png_base64: str


class SegmentResponse(BaseModel):
    request_id: str
    model_name: str
    model_version: str
    task_id: str | None = None
    n_prompts: int
    masks: list[MaskResult]
    timings_ms: dict[str, float]
