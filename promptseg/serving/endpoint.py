"""The HTTP side of the Serve application: the FastAPI routes of contract 4 on the `PromptSegEndpoint` deployment,
and the exception handlers that turn errors into typed JSON answers.

A replica loads `models:/<name>@<alias>` (promptseg.serving.served_model, which also follows reloads) and keeps
registered tasks in a folder every replica sees (promptseg.serving.served_tasks). The routes stay thin: a multipart
body is validated into its request model (promptseg.serving.uploads), handed to the segmentation service
(promptseg.serving.segmentation) and encoded (promptseg.serving.responses). The gateway middleware
(promptseg.serving.gateway) adds request ids, the API key check, the body-size limit, the audit log and metrics. Bad
input raises `InvalidInput`, answered as a typed 422 JSON error naming the file; an invalid form field is an
`invalid_request`; an unknown task id is a 404.
"""

import asyncio
from typing import Annotated

from fastapi import FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from ray import serve

from promptseg.inference.errors import InvalidInput
from promptseg.serving import gateway as serve_gateway
from promptseg.serving.api_models import (
    ErrorDetail,
    ErrorResponse,
    Health,
    ModelInfo,
    ReloadInfo,
    SegmentResponse,
    TaskInfo,
)
from promptseg.serving.options import ServeOptions
from promptseg.serving.responses import segment_response
from promptseg.serving.segmentation import SegmentationService
from promptseg.serving.served_model import ServedModel
from promptseg.serving.served_tasks import ServedTasks, UnknownTask
from promptseg.serving.uploads import SegmentForm, TaskForm

MULTIPART = "multipart/form-data"
api = FastAPI(title="PromptSeg", version="1", description="In-context medical image segmentation")
api.add_middleware(serve_gateway.Gateway)


def _error(status: int, code: str, message: str, file: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, file=file))
    return JSONResponse(status_code=status, content=body.model_dump())


def _audit(request: Request) -> dict[str, object]:
    """The audit record of this request (written by the gateway once it is answered)."""
    return request.scope["state"]["audit"]


@api.exception_handler(InvalidInput)
async def _invalid_input(request: Request, error: InvalidInput) -> JSONResponse:
    _audit(request).update(error="invalid_input")
    return _error(422, "invalid_input", error.problem, error.file)


@api.exception_handler(UnknownTask)
async def _unknown_task(request: Request, error: UnknownTask) -> JSONResponse:
    _audit(request).update(error="unknown_task")
    return _error(404, "unknown_task", f"no task {error.task_id!r} is registered")


@api.exception_handler(serve_gateway.BodyTooLarge)
async def _body_too_large(request: Request, error: serve_gateway.BodyTooLarge) -> JSONResponse:
    _audit(request).update(error="body_too_large")
    return _error(413, "body_too_large", error.detail)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    """A form's validator that found bad input (`InvalidInput`) answers as such; any other invalid field is an
    invalid request."""
    for detail in error.errors():
        if isinstance(found := detail.get("ctx", {}).get("error"), InvalidInput):
            return await _invalid_input(request, found)
    _audit(request).update(error="invalid_request")
    fields = ", ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in error.errors())
    return _error(422, "invalid_request", fields)


@serve.deployment
@serve.ingress(api)
class PromptSegEndpoint:
    def __init__(self, tracking_uri: str, model_name: str, alias: str, options: ServeOptions) -> None:
        settings = options.settings
        self.model = ServedModel(tracking_uri, model_name, alias, settings.state_file, 16)
        tasks = ServedTasks(settings.tasks_dir, settings.cache_size)
        self.service = SegmentationService(self.model, tasks, int(settings.max_volume_mb * 2**20))
        self.service.configure_batching(settings.max_batch_size, settings.batch_wait_ms / 1e3)
        limit = int(settings.max_body_mb * 2**20)
        serve_gateway.configure(serve_gateway.GatewayConfig(limit, options.api_key_sha256, settings.audit_dir))

    @api.get("/healthz")
    def healthz(self) -> Health:
        return Health(status="ok", model_version=self.model.current().version)

    @api.get("/metrics", response_class=PlainTextResponse)
    def metrics(self) -> Response:
        serving = self.model.current()
        serve_gateway.MODEL.clear()
        serve_gateway.MODEL.labels(serving.model.name, serving.version).set(1)
        return Response(generate_latest(serve_gateway.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/model")
    def model_info(self) -> ModelInfo:
        model = self.model.current().model
        return ModelInfo(name=model.name, version=model.version, alias=self.model.alias, model_card=model.model_card)

    @api.post("/v1/reload")
    async def reload(self, request: Request) -> ReloadInfo:
        previous, version = await asyncio.to_thread(self.model.reload)
        _audit(request).update(model_version=version, previous_version=previous)
        changed = previous != version
        return ReloadInfo(alias=self.model.alias, previous_version=previous, model_version=version, changed=changed)

    @api.post("/v1/tasks", status_code=201, responses={422: {"model": ErrorResponse}})
    async def create_task(self, request: Request, form: Annotated[TaskForm, Form(media_type=MULTIPART)]) -> TaskInfo:
        return await self.service.create_task(form.request(), await form.prompts(), _audit(request))

    @api.get("/v1/tasks/{task_id}", responses={404: {"model": ErrorResponse}})
    def get_task(self, task_id: str) -> TaskInfo:
        return self.service.task_info(task_id)

    @api.delete("/v1/tasks/{task_id}", status_code=204, responses={404: {"model": ErrorResponse}})
    def delete_task(self, request: Request, task_id: str) -> Response:
        self.service.delete_task(task_id)
        _audit(request).update(task_id=task_id)
        return Response(status_code=204)

    @api.post(
        "/v1/segment",
        responses={404: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    )
    async def segment(
        self, request: Request, form: Annotated[SegmentForm, Form(media_type=MULTIPART)]
    ) -> SegmentResponse:
        outcome = await self.service.segment(form.request(), form.files(), _audit(request))
        return await segment_response(outcome, request.scope["state"]["request_id"])
