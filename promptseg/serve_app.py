"""The Ray Serve application: a FastAPI ingress serving a registered PromptSeg version (contract 4's routes).

The deployment loads `models:/<name>@<alias>` from the configured MLflow at start-up and answers with the version
it loaded. Bad input raises `InvalidInput`, turned into a typed 4xx JSON error naming the file.
"""

import base64
import contextlib
import time
import uuid

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.exceptions import RayServeException

from promptseg.api_models import ErrorDetail, ErrorResponse, Health, MaskResult, ModelInfo, SegmentResponse
from promptseg.image_io import InvalidInput, binary_mask, decode_image, encode_png
from promptseg.predictor import Predictor
from promptseg.registry import load_version

APP_NAME = "promptseg"
api = FastAPI(title="PromptSeg", version="1", description="In-context medical image segmentation")


def _error(status: int, code: str, message: str, file: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, file=file))
    return JSONResponse(status_code=status, content=body.model_dump())


@api.exception_handler(InvalidInput)
async def _invalid_input(_: Request, error: InvalidInput) -> JSONResponse:
    return _error(422, "invalid_input", error.problem, error.file)


@api.exception_handler(RequestValidationError)
async def _invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
    fields = ", ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in error.errors())
    return _error(422, "invalid_request", fields)


async def _read_images(files: list[UploadFile], field: str) -> list[tuple[str, object]]:
    return [
        (f"{field}[{i}] {f.filename}", decode_image(f"{field}[{i}] {f.filename}", await f.read()))
        for i, f in enumerate(files)
    ]


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=8)
@serve.ingress(api)
class PromptSegEndpoint:
    def __init__(self, tracking_uri: str, model_name: str, alias: str) -> None:
        self.alias = alias
        self.model = load_version(tracking_uri, model_name, alias)
        self.predictor = Predictor(self.model.network)

    @api.get("/healthz")
    def healthz(self) -> Health:
        return Health(status="ok", model_version=self.model.version)

    @api.get("/v1/model")
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            name=self.model.name, version=self.model.version, alias=self.alias, model_card=self.model.model_card
        )

    @api.post("/v1/segment", responses={422: {"model": ErrorResponse}})
    async def segment(
        self,
        prompt_images: list[UploadFile] = File(...),
        prompt_masks: list[UploadFile] = File(...),
        queries: list[UploadFile] = File(...),
        modality: str = Form("CT"),
        threshold: float = Form(0.5, gt=0.0, lt=1.0),
    ) -> SegmentResponse:
        start = time.perf_counter()
        images = [array for _, array in await _read_images(prompt_images, "prompt_images")]
        masks = [binary_mask(name, array) for name, array in await _read_images(prompt_masks, "prompt_masks")]
        query_arrays = await _read_images(queries, "queries")
        decoded = time.perf_counter()
        task = self.predictor.encode_task(images, masks, modality)
        encoded = time.perf_counter()
        results = self.predictor.segment(task, [array for _, array in query_arrays], modality, threshold)
        done = time.perf_counter()
        return SegmentResponse(
            request_id=uuid.uuid4().hex,
            model_name=self.model.name,
            model_version=self.model.version,
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


def deploy(tracking_uri: str, model_name: str, alias: str, host: str, port: int) -> str:
    """Run the application on the connected Ray cluster; return its base URL."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(PromptSegEndpoint.bind(tracking_uri, model_name, alias), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def undeploy() -> None:
    """Delete the application if Serve runs on this Ray instance (nothing to do otherwise)."""
    with contextlib.suppress(RayServeException):
        serve.delete(APP_NAME)
