"""The Ray Serve application: a FastAPI ingress serving a registered PromptSeg version (contract 4's routes).

The deployment loads `models:/<name>@<alias>` from the configured MLflow at start-up and answers with the version
it loaded. Registered tasks live in a folder every replica sees (promptseg.served_tasks), their encodings in a
per-replica LRU keyed by model version. Bad input raises `InvalidInput`, turned into a typed 4xx JSON error naming
the file; an unknown task id is a 404.
"""

import base64
import contextlib
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.exceptions import RayServeException

from promptseg.api_models import (
    ErrorDetail,
    ErrorResponse,
    Health,
    MaskResult,
    ModelInfo,
    SegmentResponse,
    TaskInfo,
)
from promptseg.image_io import InvalidInput, binary_mask, decode_image, encode_png
from promptseg.predictor import Predictor, TaskEncoding
from promptseg.registry import load_version
from promptseg.served_tasks import ServedTasks, StoredTask, UnknownTask

APP_NAME = "promptseg"
api = FastAPI(title="PromptSeg", version="1", description="In-context medical image segmentation")


def _error(status: int, code: str, message: str, file: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, file=file))
    return JSONResponse(status_code=status, content=body.model_dump())


@api.exception_handler(InvalidInput)
async def _invalid_input(_: Request, error: InvalidInput) -> JSONResponse:
    return _error(422, "invalid_input", error.problem, error.file)


@api.exception_handler(UnknownTask)
async def _unknown_task(_: Request, error: UnknownTask) -> JSONResponse:
    return _error(404, "unknown_task", f"no task {error.task_id!r} is registered")


@api.exception_handler(RequestValidationError)
async def _invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
    fields = ", ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in error.errors())
    return _error(422, "invalid_request", fields)


async def _read_images(files: list[UploadFile], field: str) -> list[tuple[str, object]]:
    return [
        (f"{field}[{i}] {f.filename}", decode_image(f"{field}[{i}] {f.filename}", await f.read()))
        for i, f in enumerate(files)
    ]


async def _read_prompts(
    prompt_images: list[UploadFile], prompt_masks: list[UploadFile]
) -> tuple[list[object], list[object]]:
    images = [array for _, array in await _read_images(prompt_images, "prompt_images")]
    masks = [binary_mask(name, array) for name, array in await _read_images(prompt_masks, "prompt_masks")]
    return images, masks


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=8)
@serve.ingress(api)
class PromptSegEndpoint:
    def __init__(self, tracking_uri: str, model_name: str, alias: str, tasks_dir: str, cache_size: int = 128) -> None:
        self.alias = alias
        self.model = load_version(tracking_uri, model_name, alias)
        self.predictor = Predictor(self.model.network)
        self.tasks = ServedTasks(Path(tasks_dir), cache_size)

    def _encode(self, task: StoredTask) -> TaskEncoding:
        return self.predictor.encode_task(task.images, task.masks, task.modality)

    @api.get("/healthz")
    def healthz(self) -> Health:
        return Health(status="ok", model_version=self.model.version)

    @api.get("/v1/model")
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            name=self.model.name, version=self.model.version, alias=self.alias, model_card=self.model.model_card
        )

    @api.post("/v1/tasks", status_code=201, responses={422: {"model": ErrorResponse}})
    async def create_task(
        self,
        prompt_images: list[UploadFile] = File(...),
        prompt_masks: list[UploadFile] = File(...),
        modality: str = Form("CT"),
    ) -> TaskInfo:
        images, masks = await _read_prompts(prompt_images, prompt_masks)
        encoding = self.predictor.encode_task(images, masks, modality)  # validates the prompts before storing
        task_id = self.tasks.put(images, masks, modality)
        self.tasks.encoding(task_id, self.model.version, lambda _: encoding)
        return TaskInfo(task_id=task_id, n_prompts=len(images), modality=modality)

    @api.get("/v1/tasks/{task_id}", responses={404: {"model": ErrorResponse}})
    def get_task(self, task_id: str) -> TaskInfo:
        task = self.tasks.get(task_id)
        return TaskInfo(task_id=task_id, n_prompts=task.n_prompts, modality=task.modality)

    @api.delete("/v1/tasks/{task_id}", status_code=204, responses={404: {"model": ErrorResponse}})
    def delete_task(self, task_id: str) -> Response:
        self.tasks.delete(task_id)
        return Response(status_code=204)

    @api.post("/v1/segment", responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
    async def segment(
        self,
        queries: list[UploadFile] = File(...),
        prompt_images: list[UploadFile] | None = File(None),
        prompt_masks: list[UploadFile] | None = File(None),
        task_id: str | None = Form(None),
        modality: str | None = Form(None),
        threshold: float = Form(0.5, gt=0.0, lt=1.0),
    ) -> SegmentResponse:
        start = time.perf_counter()
        if task_id is not None and (prompt_images or prompt_masks):
            raise InvalidInput("task_id", "give either a task_id or prompt files, not both")
        if task_id is None and not (prompt_images and prompt_masks):
            raise InvalidInput("prompt_images", "give a task_id or prompt_images and prompt_masks")
        if task_id is None:
            images, masks = await _read_prompts(prompt_images, prompt_masks)
        query_arrays = await _read_images(queries, "queries")
        decoded = time.perf_counter()
        if task_id is None:
            modality = modality or "CT"
            task = self.predictor.encode_task(images, masks, modality)
        else:
            task = self.tasks.encoding(task_id, self.model.version, self._encode)
            modality = modality or self.tasks.modality(task_id)
        encoded = time.perf_counter()
        results = self.predictor.segment(task, [array for _, array in query_arrays], modality, threshold)
        done = time.perf_counter()
        return SegmentResponse(
            request_id=uuid.uuid4().hex,
            model_name=self.model.name,
            model_version=self.model.version,
            task_id=task_id,
            n_prompts=task.n_prompts,
            masks=[
                MaskResult(
                    query=name,
                    height=result.mask.shape[0],
                    width=result.mask.shape[1],
                    foreground_fraction=float(result.mask.mean()),
                    mask_png_base64=base64.b64encode(encode_png(result.mask)).decode(),
                )
                for (name, _), result in zip(query_arrays, results, strict=True)
            ],
            timings_ms={
                "decode": 1e3 * (decoded - start),
                "encode_prompts": 1e3 * (encoded - decoded),
                "segment": 1e3 * (done - encoded),
            },
        )


def deploy(tracking_uri: str, model_name: str, alias: str, host: str, port: int, tasks_dir: Path) -> str:
    """Run the application on the connected Ray cluster; return its base URL."""
    serve.start(http_options={"host": host, "port": port})
    endpoint = PromptSegEndpoint.bind(tracking_uri, model_name, alias, str(tasks_dir))
    serve.run(endpoint, name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def undeploy() -> None:
    """Delete the application if Serve runs on this Ray instance (nothing to do otherwise)."""
    with contextlib.suppress(RayServeException):
        serve.delete(APP_NAME)
