"""Contract 4, the HTTP API's request and response bodies (pydantic), shared by the Serve app and the client.

Routes (versioned under /v1, OpenAPI at /docs):
- POST /v1/tasks (multipart): `prompt_images`, `prompt_masks`, form fields `modality`, optional `window`
  ("low,high", a CT window) and `labels` → 201 `TaskInfo`. The task id is a content hash: the same prompts give
  the same id; optional `names` (structure names) and `pixel_spacing`. POST /v1/tasks/from-volume (multipart):
  a `volume` and its `label_volume` on the same grid (NIfTI, zipped DICOM series, or a DICOM SEG of the series),
  `labels`, `names`, a RAS `axis` or `all_axes`, `annotated` empty slices → 201 `TaskInfo` with prompts cut from the
  labelled slices. GET /v1/tasks → `TaskList` (every registered task); GET /v1/tasks/{id} → `TaskInfo`; DELETE → 204.
- POST /v1/segment (multipart): 2D `queries` (PNG or NPY files) or one 3D `volume` (NIfTI, or a zip of one DICOM
  series) prepared as training data (RAS, resampled to `target_spacing`, default the model's) and segmented slice by
  slice along the RAS `axis` (default: the axis the file's slices lie along), or along all three with `fuse_axes`;
  2D queries take an optional `pixel_spacing`; against a
  registered `task_id` or inline `prompt_images` and `prompt_masks`. Form fields: `modality` (CT, MR, ...; 8-bit
  images are scaled whatever the modality; default the task's or the DICOM header's), `window`, `labels`,
  `threshold`, `ensemble` (K prompt subsets averaged), `uncertainty` (adds float16 NPY maps), `mask_format` (png or
  npy, for 2D), `volume_format` (nifti or npy for NIfTI input, dicom-seg or npy for DICOM input),
  `largest_component`, `model_input` (a volume's model-grid slices back) → `SegmentResponse`.
- Masks in: {0, 1} or {0, 255} binary masks, or with `labels` ("1,3") label maps from which each wanted value is
  one structure, all segmented in the same call. Masks out: label maps holding those values (0 = background,
  a pixel goes to the most probable label above the threshold); a binary result (no `labels`) is label 1, written
  as {0, 255} in PNGs.
- POST /v1/jobs (multipart, POST /v1/segment's body) → 202 `JobInfo` and a `Location` header: the request runs in
  the background (long volumes outlive a client's timeout). GET /v1/jobs/{id} → `JobInfo` (queued, running,
  succeeded, failed with its `Problem`, cancelled); GET /v1/jobs/{id}/result → the `SegmentResponse` once it
  succeeded (409 before, or when it failed or was cancelled); DELETE /v1/jobs/{id} cancels an unfinished job
  (→ `JobInfo`) or deletes a finished one (→ 204). Unknown jobs get 404 `unknown_job`.
- GET /v1/model → `ModelInfo`; GET /healthz → `Health` (always open); GET /metrics → Prometheus text (every
  replica's counters summed); POST /v1/reload → `ReloadInfo` (follow the alias to its current version).
- Auth: when the endpoint has an API key, every route but /healthz and the docs needs header `X-API-Key`
  (401 missing, 403 wrong). Bodies over the configured size get 413 before they are decoded; overload gets 503.
- Errors: every error answer is a `Problem` (RFC 9457 problem details, `application/problem+json`) whose `code`
  names the problem and `file` the offending upload; never a 500 for bad input.

The form fields of the POST routes are `TaskRequest`, `VolumeTaskRequest` and `SegmentRequest` (jobs take the
latter too), with their comma-string fields parsed by promptseg.serving.form_fields: the endpoint validates the
form into them, the client and the CLI build them and send `form_fields()`. This module imports pydantic and the
input error only (no torch), so the client installs without the serving stack.
"""

from __future__ import annotations

from datetime import datetime
from http import HTTPStatus
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from promptseg.inference.errors import InvalidInput
from promptseg.serving.form_fields import Indices, Labels, Names, PixelSpacing, VoxelSpacing, Window

DEFAULT_MODALITY = "CT"  # the predictor's defaults (promptseg.inference.predictor), checked equal by a unit test
DEFAULT_THRESHOLD = 0.5
MAX_ENSEMBLE = 16
PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE = "urn:promptseg:problem:"
API_KEY_HEADER = "X-API-Key"


def status_problem_code(status: int) -> str:
    """The problem code of a bare HTTP status: its reason phrase in snake case (not_found, method_not_allowed),
    `http_error` for a status without one."""
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


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


class NamedLabels(FormRequest):
    """The structure names a task carries for its label values."""

    names: Names = Field(
        None, description="the structures' names, comma-separated, one per label value in order (DICOM SEG labels)"
    )

    def structure_names(self, values: list[int]) -> dict[int, str]:
        """Each label value's structure name: the given names in label order, else `label <value>`."""
        if self.names is None:
            return {value: f"label {value}" for value in values}
        if len(self.names) != len(values):
            raise InvalidInput("names", f"{len(self.names)} names for {len(values)} label values {values}")
        return dict(zip(values, self.names, strict=True))


class TaskRequest(NamedLabels):
    """POST /v1/tasks's fields: how the prompts are normalized and which label values of their masks to keep."""

    modality: str = Field(
        DEFAULT_MODALITY,
        description="the prompts' modality, a DICOM modality code (CT, MR, PT, ...): CT is windowed, others are "
        "clipped to each image's percentiles; 8-bit images are scaled whatever the modality",
        examples=["CT", "MR"],
    )
    window: Window = Field(None, description="a CT window 'low,high' in Hounsfield units")
    labels: Labels = Field(
        None, description="label values to keep from label-map masks, comma-separated; none: binary masks (label 1)"
    )
    pixel_spacing: PixelSpacing = Field(
        None, description="the prompt images' pixel spacing 'dy,dx' in mm (keeps their physical aspect); none: square"
    )


class VolumeTaskRequest(NamedLabels):
    """POST /v1/tasks/from-volume's fields: which labels of the label volume, their names, the slicing axis and
    the slices annotated as empty."""

    modality: str | None = Field(
        None, description="the scan's modality; default the DICOM header's, else CT", examples=["CT", "MR"]
    )
    window: Window = Field(None, description="a CT window 'low,high' in Hounsfield units; default the model's")
    labels: Labels = Field(
        None, description="the label values of the label volume to use, comma-separated; default every one present"
    )
    axis: int | None = Field(
        None, ge=0, le=2, description="the RAS axis prompts are cut along; default the axis the file's slices lie along"
    )
    all_axes: bool = Field(
        False, description="cut prompts along all three RAS axes (for segmenting with fuse_axes), not only `axis`"
    )
    annotated: Indices = Field(
        None, description="slices (indices along the axis) annotated as holding none of the labels: negatives"
    )


class SegmentRequest(FormRequest):
    """POST /v1/segment's fields (every part of the request but its files)."""

    task_id: str | None = Field(None, description="a registered task's id; none: inline prompt files")
    modality: str | None = Field(
        None,
        description="the queries' modality (a DICOM modality code); default the task's, else the DICOM header's, "
        "else CT",
        examples=["CT", "MR"],
    )
    window: Window = Field(None, description="a CT window 'low,high' in Hounsfield units; default the task's")
    labels: Labels = Field(
        None, description="label values to segment, comma-separated; default every label of the task or prompts"
    )
    axis: int | None = Field(
        None,
        ge=0,
        le=2,
        description="the RAS axis a volume is sliced along (0 sagittal, 1 coronal, 2 axial); default the axis the "
        "file's slices lie along",
    )
    target_spacing: VoxelSpacing = Field(
        None, description="the spacing a volume is resampled to before slicing; default the served model's"
    )
    pixel_spacing: PixelSpacing = Field(None, description="the 2D queries' pixel spacing 'dy,dx' in mm; none: square")
    fuse_axes: bool = Field(
        False,
        description="segment a volume along all three RAS axes and average the probabilities; needs a task with "
        "prompts along each axis (from a volume with all_axes)",
    )
    largest_component: bool = Field(
        False, description="keep each structure's largest connected component (in 3D for a volume)"
    )
    model_input: bool = Field(
        False, description="add the model-grid slices the network received (float16 NPY) to a volume's result"
    )
    threshold: float = Field(
        DEFAULT_THRESHOLD, gt=0.0, lt=1.0, description="the probability above which a pixel belongs to a label"
    )
    ensemble: int = Field(1, ge=1, le=MAX_ENSEMBLE, description="K random prompt subsets whose predictions average")
    uncertainty: bool = Field(False, description="add a float16 NPY uncertainty map per query or volume")
    mask_format: Literal["png", "npy"] = Field("png", description="the file format of 2D label maps")
    volume_format: Literal["nifti", "dicom-seg", "npy"] | None = Field(
        None,
        description="the file format of a volume's label map: nifti or npy for NIfTI input, dicom-seg or npy for "
        "DICOM input; default the input's own",
    )


class Problem(BaseModel):
    """Every error answer: RFC 9457 problem details (`application/problem+json`) with two extension members,
    `code` (the project's name of the problem, also the end of `type`) and `file` (the upload at fault)."""

    type: str = Field(description=f"a URI naming the kind of problem: {PROBLEM_TYPE}<code>")
    title: str = Field(description="a short summary of the kind of problem (the status's reason phrase)")
    status: int = Field(description="the HTTP status code of this answer")
    detail: str = Field(description="what went wrong with this request, for people")
    instance: str | None = Field(
        None, description="this occurrence: urn:promptseg:request:<id>, the X-Request-ID header and the audit log's id"
    )
    code: str = Field(description="the problem, for programs: invalid_input, unknown_task, not_found, ...")
    file: str | None = Field(None, description="the upload or form field at fault, when there is one")

    @classmethod
    def of(cls, status: int, code: str, detail: str, file: str | None = None, request_id: str | None = None) -> Problem:
        """The problem of `status` and `code`; its type and title follow from them."""
        return cls(
            type=PROBLEM_TYPE + code,
            title=HTTPStatus(status).phrase,
            status=status,
            detail=detail,
            instance=f"urn:promptseg:request:{request_id}" if request_id else None,
            code=code,
            file=file,
        )


class Health(BaseModel):
    """The endpoint is up and serves this model version."""

    status: str = Field(description="ok")
    model_version: str = Field(description="the registered model version this replica serves")


class ModelInfo(BaseModel):
    """The registered model version the endpoint serves."""

    name: str = Field(description="the registered model's name")
    version: str = Field(description="its version")
    alias: str = Field(description="the alias the endpoint follows (champion unless deployed otherwise)")
    model_card: dict = Field(description="the version's model card: data, training, evaluation, license")


class ReloadInfo(BaseModel):
    """What a reload did: the alias's version before and now."""

    alias: str = Field(description="the alias followed")
    previous_version: str = Field(description="the version served before the reload")
    model_version: str = Field(description="the version served now")
    changed: bool = Field(description="whether the alias had moved")


class TaskInfo(BaseModel):
    """A registered task: its prompts' count, modality, label values and CT window."""

    task_id: str = Field(description="the content hash of the prompts, modality, window and labels")
    n_prompts: int = Field(description="the number of prompt pairs")
    modality: str = Field(description="the prompts' modality")
    labels: list[int] = Field(description="the label values the task segments")
    window: tuple[float, float] | None = Field(None, description="the CT window (low, high), if any")
    names: dict[str, str] = Field({}, description="each label value's structure name")
    pixel_spacing: tuple[float, float] | None = Field(None, description="the prompts' pixel spacing (dy, dx) in mm")
    axes: list[int] = Field([], description="the RAS axes its prompts were cut along (none for 2D prompts)")


class TaskList(BaseModel):
    """Every task registered with the endpoint."""

    tasks: list[TaskInfo] = Field(description="the tasks, by id")


class MaskResult(BaseModel):
    """One 2D query's label map (base64 of `mask_format` bytes) and, when asked, its uncertainty (float16 NPY,
    (H, W) for one label, (L, H, W) for several)."""

    query: str = Field(description="the query's form field, index and file name")
    height: int = Field(description="the label map's height (the query's own)")
    width: int = Field(description="the label map's width (the query's own)")
    mask_format: str = Field(description="png or npy")
    mask_base64: str = Field(description="the label map file, base64")
    foreground_fraction: dict[str, float] = Field(description="the fraction of pixels of each label value")
    uncertainty_npy_base64: str | None = Field(None, description="the uncertainty map as float16 NPY, base64")


class VolumeResult(BaseModel):
    """A volume's label map on the input's grid (NIfTI, DICOM SEG or NPY bytes, base64) and its uncertainty."""

    volume: str = Field(description="the volume's form field and file name")
    shape: list[int] = Field(description="the label volume's shape (the input's grid)")
    axis: int | None = Field(description="the RAS axis it was sliced along; none when the three axes were fused")
    n_slices: int = Field(description="the number of slices segmented")
    volume_format: str = Field(description="nifti, dicom-seg or npy")
    volume_base64: str = Field(description="the label volume file, base64")
    foreground_fraction: dict[str, float] = Field(description="the fraction of voxels of each label value")
    uncertainty_npy_base64: str | None = Field(None, description="the uncertainty volume as float16 NPY, base64")
    model_input_npy_base64: str | None = Field(
        None, description="with model_input: the prepared slices (K, R, R) the network received, float16 NPY, base64"
    )


class SegmentResponse(BaseModel):
    """A segmentation: one label map per 2D query, or one label volume."""

    request_id: str = Field(description="the request's id (the X-Request-ID header)")
    model_name: str = Field(description="the registered model that segmented")
    model_version: str = Field(description="its version")
    task_id: str | None = Field(None, description="the registered task segmented against, if any")
    n_prompts: int = Field(description="the number of prompt pairs")
    labels: list[int] = Field(description="the label values in the label maps (0 is background)")
    ensemble: int = Field(description="the number of prompt subsets averaged")
    masks: list[MaskResult] = Field([], description="the 2D queries' label maps, in the order sent")
    volume: VolumeResult | None = Field(None, description="the volume's label map")
    timings_ms: dict[str, float] = Field(description="milliseconds spent decoding, encoding prompts, segmenting, ...")


JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobInfo(BaseModel):
    """A segment request run as a job (POST /v1/jobs): its state and, when it failed, why."""

    job_id: str = Field(description="the job's id")
    state: JobState = Field(
        description="queued (waiting for a slot in the replica that accepted it), running, succeeded (the result "
        "is ready), failed, or cancelled"
    )
    created: datetime = Field(description="when it was submitted (UTC)")
    updated: datetime = Field(description="when its state last changed (UTC)")
    error: Problem | None = Field(None, description="why it failed: the problem the synchronous route would answer")
