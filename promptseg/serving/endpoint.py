"""The HTTP side of the Serve application: the FastAPI routes of contract 4 on the `PromptSegEndpoint` deployment,
the exception handlers that turn every error into problem details, and the OpenAPI document.

A replica loads `models:/<name>@<alias>` (promptseg.serving.served_model, which also follows reloads) and keeps
registered tasks in a folder every replica sees (promptseg.serving.served_tasks). The routes stay thin: a multipart
body is validated into its request model (promptseg.serving.uploads), handed to the segmentation service
(promptseg.serving.segmentation) and encoded (promptseg.serving.responses); POST /v1/jobs hands the same request
to this replica's job runner (promptseg.serving.jobs), whose state any replica reads from the workspace
(promptseg.serving.job_store). The gateway middleware (promptseg.serving.gateway) adds request ids, the API key
check, the body-size limit, the audit log and metrics.

Every error answer is an `api_models.Problem` (`application/problem+json`): bad input raises `InvalidInput`
(422 `invalid_input`, naming the file), an invalid form field is a 422 `invalid_request`, an unknown task a 404
`unknown_task`, an unknown job a 404 `unknown_job`, a job's result before it succeeded a 409 (`job_not_finished`,
`job_failed`, `job_cancelled`), a reload onto a version of another preparation recipe a 409
`incompatible_model`, and the framework's own answers (unknown route, wrong method, unparseable body, body
too large) and any other failure (500 `internal_error`) take the same shape. The OpenAPI document declares the problem
answers and the API-key header as a security scheme.
"""

import asyncio
import os
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from starlette.exceptions import HTTPException

from promptseg.inference.budget import OverBudget
from promptseg.inference.errors import InvalidInput
from promptseg.serving import gateway as serve_gateway
from promptseg.serving.api_models import (
    API_KEY_HEADER,
    PROBLEM_MEDIA_TYPE,
    Health,
    JobInfo,
    ModelInfo,
    Problem,
    ReloadInfo,
    SegmentResponse,
    TaskInfo,
    TaskList,
    status_problem_code,
)
from promptseg.serving.cluster_metrics import cluster_metrics
from promptseg.serving.job_store import FINISHED, JobNotSucceeded, JobStore, UnknownJob
from promptseg.serving.jobs import JobRunner
from promptseg.serving.options import ServeOptions
from promptseg.serving.responses import segment_response
from promptseg.serving.segmentation import SegmentationService
from promptseg.serving.served_model import IncompatibleModel, ServedModel
from promptseg.serving.served_tasks import ServedTasks, UnknownTask
from promptseg.serving.uploads import SegmentForm, TaskForm, VolumeTaskForm

MULTIPART = "multipart/form-data"
API_KEY_SCHEME = "APIKey"
METRIC_NAMES = {metric.name for metric in serve_gateway.METRICS}
METRIC_LABELS = {"le", *(key for metric in serve_gateway.METRICS for key in metric.tag_keys)}

api = FastAPI(
    title="PromptSeg",
    version="1",
    description="In-context medical image segmentation: register prompt pairs (an image and its mask) as a task, "
    "then segment 2D images or whole volumes against it. Errors are RFC 9457 problem details.",
)
api.add_middleware(serve_gateway.Gateway)


def _problems(described: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses: each described status and `default` answered with a `Problem`."""
    content = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    answers: dict[int | str, dict[str, Any]] = {
        status: {"description": text, "content": content} for status, text in (described or {}).items()
    }
    answers["default"] = {"description": "any other error (missing or wrong API key, ...)", "content": content}
    return answers


def _problem(
    request: Request, status: int, code: str, detail: str, file: str | None = None, headers: dict | None = None
) -> JSONResponse:
    _audit(request).update(error=code)
    body = Problem.of(status, code, detail, file, request.scope["state"]["request_id"])
    return JSONResponse(body.model_dump(exclude_none=True), status, headers, PROBLEM_MEDIA_TYPE)


def _audit(request: Request) -> dict[str, object]:
    """The audit record of this request (written by the gateway once it is answered)."""
    return request.scope["state"]["audit"]


@api.exception_handler(InvalidInput)
async def _invalid_input(request: Request, error: InvalidInput) -> JSONResponse:
    """Bad input: 422 `invalid_input`; input within the body limit but over the request's decoding budget: 413
    `over_budget`."""
    if isinstance(error, OverBudget):
        return _problem(request, 413, "over_budget", error.problem, error.file)
    return _problem(request, 422, "invalid_input", error.problem, error.file)


@api.exception_handler(IncompatibleModel)
async def _incompatible_model(request: Request, error: IncompatibleModel) -> JSONResponse:
    return _problem(request, 409, "incompatible_model", str(error))


@api.exception_handler(UnknownTask)
async def _unknown_task(request: Request, error: UnknownTask) -> JSONResponse:
    return _problem(request, 404, "unknown_task", f"no task {error.task_id!r} is registered")


@api.exception_handler(UnknownJob)
async def _unknown_job(request: Request, error: UnknownJob) -> JSONResponse:
    return _problem(request, 404, "unknown_job", f"no job {error.job_id!r} (never submitted, deleted or expired)")


@api.exception_handler(JobNotSucceeded)
async def _job_not_succeeded(request: Request, error: JobNotSucceeded) -> JSONResponse:
    info = error.info
    code = f"job_{info.state}" if info.state in FINISHED else "job_not_finished"
    detail = f"job {info.job_id} is {info.state}" + (f": {info.error.detail}" if info.error else "")
    return _problem(request, 409, code, detail)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    """The framework's answers (no such route, wrong method, unparseable body)."""
    phrase = HTTPStatus(error.status_code).phrase
    code = status_problem_code(error.status_code)
    detail = error.detail if error.detail != phrase else f"{request.method} {request.url.path}: {phrase.lower()}"
    return _problem(request, error.status_code, code, detail, headers=error.headers)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    """A form's validator that found bad input (`InvalidInput`) answers as such; any other invalid field is an
    invalid request."""
    for detail in error.errors():
        if isinstance(found := detail.get("ctx", {}).get("error"), InvalidInput):
            return await _invalid_input(request, found)
    fields = ", ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in error.errors())
    return _problem(request, 422, "invalid_request", fields)


@api.exception_handler(Exception)
async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    return _problem(request, 500, "internal_error", f"the endpoint failed ({type(error).__name__}); see its logs")


def _openapi() -> dict[str, Any]:
    """FastAPI's document plus the `Problem` schema and the API-key scheme on every route but the open ones."""
    if api.openapi_schema is None:
        schema = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {})["Problem"] = Problem.model_json_schema()
        components["securitySchemes"] = {
            API_KEY_SCHEME: {
                "type": "apiKey",
                "in": "header",
                "name": API_KEY_HEADER,
                "description": "needed when the endpoint has an API key (PROMPTSEG_SERVE_API_KEY): 401 without it, "
                "403 when it does not match",
            }
        }
        for path, operations in schema["paths"].items():
            if path not in serve_gateway.OPEN_PATHS:
                for operation in operations.values():
                    operation["security"] = [{API_KEY_SCHEME: []}]
        api.openapi_schema = schema
    return api.openapi_schema


api.openapi = _openapi


def _health_check_period_s() -> float:
    """How often Serve checks a replica, which re-sets its model-info gauge: Ray's metrics agent drops a gauge not
    set again within two report intervals (`RAY_metrics_report_interval_ms`, 10 s by default), so once per
    interval."""
    return max(float(os.environ.get("RAY_metrics_report_interval_ms", "10000")), 1000.0) / 1000  # noqa: SIM112


@serve.deployment(health_check_period_s=_health_check_period_s())
@serve.ingress(api)
class PromptSegEndpoint:
    def __init__(self, tracking_uri: str, model_name: str, alias: str, options: ServeOptions) -> None:
        settings = options.settings
        self.model = ServedModel(tracking_uri, model_name, alias, settings.state_file, 16)
        self.tasks = ServedTasks(settings.tasks_dir, int(settings.cache_mb * 2**20))
        self.service = SegmentationService(self.model, self.tasks, settings.limits)
        self.service.configure_batching(settings.max_batch_size, settings.batch_wait_ms / 1e3)
        store = JobStore(settings.jobs_dir, settings.job_retention_s, settings.job_stale_s)
        self.jobs = JobRunner(store, self.service, settings.jobs_per_replica, settings.job_limits)
        serve_gateway.configure(
            serve_gateway.GatewayConfig(
                max_body_bytes=int(settings.max_body_mb * 2**20),
                api_key_sha256=options.api_key_sha256,
                audit_dir=settings.audit_dir,
                body_timeout_s=settings.body_timeout_s,
                work_slots=settings.work_slots,
                max_waiting=settings.max_waiting,
                retry_after_s=settings.retry_after_s,
            )
        )
        self._reported: tuple[str, str] | None = None
        self._report_model()

    def _report_model(self) -> None:
        """Set the model-info gauge to the version this replica serves now (after catching up with a reload)."""
        serving = self.model.current()
        served = (serving.model.name, serving.version)
        if self._reported is not None and served != self._reported:
            serve_gateway.MODEL.labels(*self._reported).set(0)
        serve_gateway.MODEL.labels(*served).set(1)  # set again every time: Ray drops a gauge left unset too long
        self._reported = served

    def check_health(self) -> None:
        """Serve's periodic replica check: sets the model-info gauge again (see `_health_check_period_s`)."""
        self._report_model()

    @api.get("/healthz", responses=_problems())
    def healthz(self) -> Health:
        """Liveness: the replica is up, and the model version it serves; answered at once however busy the
        replica is (it waits for no work slot); open without an API key."""
        return Health(status="ok", model_version=self.model.current().version)

    @api.get(
        "/readyz",
        response_model=Health,
        responses=_problems({503: "every work slot is busy and the wait is full; see Retry-After"}),
    )
    async def readyz(self, request: Request) -> Response:
        """Readiness: whether this replica takes new work now (a work slot is free or a request may wait for one);
        503 `not_ready` with a Retry-After when it would refuse it. Open without an API key."""
        slots = serve_gateway.work_slots()
        if not slots.ready:
            detail = f"all {slots.slots} work slots are busy and {slots.waiting} requests wait"
            retry = {"Retry-After": str(serve_gateway.current_config().retry_after_s)}
            return _problem(request, 503, "not_ready", detail, headers=retry)
        return JSONResponse(Health(status="ready", model_version=self.model.current().version).model_dump())

    @api.get("/metrics", response_class=PlainTextResponse, responses=_problems())
    async def metrics(self) -> Response:
        """Prometheus text: request counts and latencies by route and status, query slices, batch sizes, task cache
        hits and misses and replicas per model version, summed over every replica of this application (Ray's
        metrics agents export them; values lag by up to Ray's metrics report interval)."""
        application = serve.get_replica_context().app_name
        text = await asyncio.to_thread(cluster_metrics, application, METRIC_NAMES, METRIC_LABELS)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/model", responses=_problems())
    def model_info(self) -> ModelInfo:
        """The registered model version served: name, version, the alias followed and its model card."""
        model = self.model.current().model
        return ModelInfo(name=model.name, version=model.version, alias=self.model.alias, model_card=model.model_card)

    @api.post("/v1/reload", responses=_problems({409: "the alias points to a version of another preparation recipe"}))
    async def reload(self, request: Request) -> ReloadInfo:
        """Follow the alias to the version it points to now; every replica catches up before its next request."""
        previous, version = await asyncio.to_thread(self.model.reload)
        self._report_model()
        _audit(request).update(model_version=version, previous_version=previous)
        changed = previous != version
        return ReloadInfo(alias=self.model.alias, previous_version=previous, model_version=version, changed=changed)

    @api.get("/v1/tasks", responses=_problems())
    def list_tasks(self) -> TaskList:
        """Every registered task (the task folder all replicas share), by id."""
        return TaskList(tasks=self.service.list_tasks())

    @api.post(
        "/v1/tasks",
        status_code=201,
        responses=_problems({413: "the body is over the size limit", 422: "a prompt file or field is invalid"}),
    )
    async def create_task(self, request: Request, form: Annotated[TaskForm, Form(media_type=MULTIPART)]) -> TaskInfo:
        """Register prompt pairs (images and masks, PNG or NPY) once; the id is a hash of their content, so the same
        prompts give the same task. Segment against it with `task_id`."""
        return await self.service.create_task(form.request(), form.files(), _audit(request))

    @api.post(
        "/v1/tasks/from-volume",
        status_code=201,
        responses=_problems({413: "the body is over the size limit", 422: "a volume or field is invalid"}),
    )
    async def create_task_from_volume(
        self, request: Request, form: Annotated[VolumeTaskForm, Form(media_type=MULTIPART)]
    ) -> TaskInfo:
        """Register a task from an annotated volume: a scan (NIfTI or zipped DICOM series) and its label volume on
        the same grid (NIfTI, zipped DICOM series or a DICOM SEG of that series); the slices holding the wanted
        labels along `axis` (evenly chosen across their extent) and the `annotated` empty slices become the
        prompts."""
        return await self.service.create_task_from_volume(form.request(), form.files(), _audit(request))

    @api.get("/v1/tasks/{task_id}", responses=_problems({404: "no such task"}))
    def get_task(self, task_id: str) -> TaskInfo:
        """A registered task: number of prompts, modality, label values and CT window."""
        return self.service.task_info(task_id)

    @api.delete("/v1/tasks/{task_id}", status_code=204, responses=_problems({404: "no such task"}))
    def delete_task(self, request: Request, task_id: str) -> Response:
        """Delete a registered task and its cached encodings."""
        self.service.delete_task(task_id)
        _audit(request).update(task_id=task_id)
        return Response(status_code=204)

    @api.post(
        "/v1/segment",
        responses=_problems(
            {
                404: "no such task",
                413: "the body is over the size limit",
                422: "a file or field is invalid (the problem names it)",
            }
        ),
    )
    async def segment(
        self, request: Request, form: Annotated[SegmentForm, Form(media_type=MULTIPART)]
    ) -> SegmentResponse:
        """Segment 2D queries (PNG or NPY) or one volume (NIfTI, or a zipped DICOM series, slice by slice along
        `axis`) against a registered task or inline prompt pairs: a label map per query, or a label volume on the
        input's grid (NIfTI, DICOM SEG or NPY)."""
        outcome = await self.service.segment(form.request(), form.files(), _audit(request))
        return await segment_response(outcome, request.scope["state"]["request_id"])

    @api.post(
        "/v1/jobs",
        status_code=202,
        responses=_problems(
            {
                404: "no such task",
                413: "the body is over the size limit",
                422: "a field is invalid, or the files are not one kind of query and one source of prompts",
            }
        ),
    )
    async def submit_job(
        self, request: Request, response: Response, form: Annotated[SegmentForm, Form(media_type=MULTIPART)]
    ) -> JobInfo:
        """Segment as a job, for volumes that take longer than a client waits: POST /v1/segment's body, answered at
        once with the queued job and its `Location`; poll GET /v1/jobs/{job_id}, then fetch its result. Files are
        decoded when the job runs: a bad file fails the job with the problem /v1/segment would answer."""
        self.jobs.store.sweep()
        info = await self.jobs.submit(form.request(), form.files(), request.scope["state"]["request_id"])
        _audit(request).update(job_id=info.job_id)
        response.headers["Location"] = f"{request.url.path.rstrip('/')}/{info.job_id}"
        return info

    @api.get("/v1/jobs/{job_id}", responses=_problems({404: "no such job"}))
    async def get_job(self, job_id: str) -> JobInfo:
        """A job's state: queued, running, succeeded, failed (with the problem) or cancelled. A queued or running job
        whose replica stopped (no heartbeat for PROMPTSEG_SERVE_JOB_STALE_S) reads as failed (`job_lost`); finished
        jobs are deleted after PROMPTSEG_SERVE_JOB_RETENTION_S."""
        self.jobs.store.sweep()
        return self.jobs.store.info(job_id)

    @api.get(
        "/v1/jobs/{job_id}/result",
        response_model=SegmentResponse,
        responses=_problems({404: "no such job", 409: "the job has not succeeded (yet)"}),
    )
    async def get_job_result(self, job_id: str) -> Response:
        """A succeeded job's result, the `SegmentResponse` POST /v1/segment would have answered."""
        body = await asyncio.to_thread(self.jobs.store.result, job_id)
        return Response(body, media_type="application/json")

    @api.delete(
        "/v1/jobs/{job_id}",
        response_model=JobInfo,
        responses=_problems({404: "no such job"}) | {204: {"description": "the finished job was deleted"}},
    )
    async def delete_job(self, request: Request, job_id: str) -> Response:
        """Cancel a queued or running job (→ its `JobInfo`, cancelled: it stops at its next opportunity and any
        result is discarded), or delete a finished one with its result (→ 204)."""
        _audit(request).update(job_id=job_id)
        info = await self.jobs.cancel_or_delete(job_id)
        return Response(status_code=204) if info is None else JSONResponse(info.model_dump(mode="json"))
