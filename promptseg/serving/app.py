"""The Ray Serve application: a FastAPI ingress serving a registered PromptSeg version (contract 4's routes).

A replica loads `models:/<name>@<alias>` (promptseg.serving.served_model, which also follows reloads), keeps
registered tasks in a folder every replica sees and their encodings in an LRU keyed by model version
(promptseg.serving.served_tasks), and reads 2D images and 3D volumes with bounded, checked decoders
(promptseg.inference.image_io, promptseg.inference.volume_io). Segmentation jobs of concurrent requests are batched
per replica (`serve.batch`): jobs against the same task encoding run as one forward pass. The gateway middleware
(promptseg.serving.gateway) adds request ids, the API key check, the body-size limit, the audit log and metrics. Bad
input raises `InvalidInput`, answered as a typed 4xx JSON error naming the file; an unknown task id is a 404.
"""

import asyncio
import base64
import contextlib
import dataclasses
import ipaddress
import time
import uuid
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from ray import serve
from ray.serve import Application
from ray.serve.exceptions import RayServeException

from promptseg.inference.image_io import InvalidInput, decode_image, encode_labels, label_masks, npy_bytes
from promptseg.inference.predictor import NORMALIZED, Predictor, Segmentation, TaskEncoding
from promptseg.inference.volume_io import Volume, dicom_seg_bytes, label_volume, nifti_bytes, read_volume
from promptseg.registry.settings import RegistrySettings
from promptseg.serving import gateway as serve_gateway
from promptseg.serving.api_models import (
    ErrorDetail,
    ErrorResponse,
    Health,
    MaskResult,
    ModelInfo,
    ReloadInfo,
    SegmentResponse,
    TaskInfo,
    VolumeResult,
)
from promptseg.serving.served_model import ServedModel, Serving
from promptseg.serving.served_tasks import ServedTasks, StoredTask, UnknownTask
from promptseg.serving.settings import ServeSettings
from storage.harmonize import NormalizationParams, normalize_intensity

APP_NAME = "promptseg"
MAX_ENSEMBLE = 16
api = FastAPI(title="PromptSeg", version="1", description="In-context medical image segmentation")
api.add_middleware(serve_gateway.Gateway)


class InsecureBinding(ValueError):
    """The endpoint would listen beyond loopback without an API key."""


@dataclass(frozen=True)
class ServeOptions:
    """How the application is deployed; `options_from` fills it from the serving settings.
    The three folders must be shared by every replica (the workspace on one machine, a shared volume on a cluster)."""

    tasks_dir: str
    audit_dir: str
    state_file: str
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    cpus_per_replica: float = 0.25
    gpus_per_replica: float = 0.0
    max_ongoing_requests: int = 8
    max_queued_requests: int = 32
    max_batch_size: int = 8
    batch_wait_ms: float = 2.0
    max_body_mb: float = 256.0
    max_volume_mb: float = 1024.0
    cache_size: int = 128
    api_key_sha256: str | None = None  # the key itself never leaves the process that deploys


def _error(status: int, code: str, message: str, file: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, file=file))
    return JSONResponse(status_code=status, content=body.model_dump())


def _audit(request: Request, **fields: object) -> None:
    request.scope["state"]["audit"].update(fields)


@api.exception_handler(InvalidInput)
async def _invalid_input(request: Request, error: InvalidInput) -> JSONResponse:
    _audit(request, error="invalid_input")
    return _error(422, "invalid_input", error.problem, error.file)


@api.exception_handler(UnknownTask)
async def _unknown_task(request: Request, error: UnknownTask) -> JSONResponse:
    _audit(request, error="unknown_task")
    return _error(404, "unknown_task", f"no task {error.task_id!r} is registered")


@api.exception_handler(serve_gateway.BodyTooLarge)
async def _body_too_large(request: Request, error: serve_gateway.BodyTooLarge) -> JSONResponse:
    _audit(request, error="body_too_large")
    return _error(413, "body_too_large", error.detail)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    _audit(request, error="invalid_request")
    fields = ", ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in error.errors())
    return _error(422, "invalid_request", fields)


async def _read(upload: UploadFile, name: str) -> bytes:
    data = await upload.read()
    if not data:
        raise InvalidInput(name, "the file is empty")
    return data


async def _read_images(files: list[UploadFile], field: str) -> list[tuple[str, np.ndarray]]:
    named = [(f"{field}[{i}] {f.filename}", f) for i, f in enumerate(files)]
    return [(name, decode_image(name, await _read(upload, name))) for name, upload in named]


def _parse_labels(text: str | None) -> list[int] | None:
    if text is None or not text.strip():
        return None
    try:
        labels = [int(part) for part in text.split(",")]
    except ValueError:
        raise InvalidInput("labels", f"labels must be comma-separated whole numbers, got {text!r}") from None
    if len(set(labels)) != len(labels) or min(labels) < 1 or max(labels) > 65535:
        raise InvalidInput("labels", f"labels must be distinct values in 1..65535, got {labels}")
    return labels


def _parse_window(text: str | None) -> tuple[float, float] | None:
    if text is None or not text.strip():
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise InvalidInput("window", f"a window is 'low,high', got {text!r}") from None
    if not low < high:
        raise InvalidInput("window", f"the window's low must be below its high, got {low}, {high}")
    return low, high


async def _read_prompts(
    prompt_images: list[UploadFile], prompt_masks: list[UploadFile], labels: list[int] | None
) -> tuple[list[np.ndarray], dict[int, list[np.ndarray]]]:
    images = [array for _, array in await _read_images(prompt_images, "prompt_images")]
    by_label: dict[int, list[np.ndarray]] = {}
    for name, array in await _read_images(prompt_masks, "prompt_masks"):
        for label, mask in label_masks(name, array, labels).items():
            by_label.setdefault(label, []).append(mask)
    return images, by_label


@dataclass(frozen=True)
class SegmentJob:
    """Query slices against one set of label encodings; jobs with equal `key` share a forward pass."""

    key: Hashable
    predictor: Predictor
    encodings: dict[str, TaskEncoding]
    slices: list[np.ndarray]
    intensity: NormalizationParams | str
    threshold: float


def _run_group(jobs: list[SegmentJob]) -> list[dict[str, list[Segmentation]]]:
    first = jobs[0]
    slices = [s for job in jobs for s in job.slices]
    results = first.predictor.segment_labels(first.encodings, slices, first.intensity, first.threshold)
    split, start = [], 0
    for job in jobs:
        split.append({label: maps[start : start + len(job.slices)] for label, maps in results.items()})
        start += len(job.slices)
    return split


def _label_map(results: dict[str, list[Segmentation]], index: int, threshold: float) -> np.ndarray:
    """The most probable label above the threshold at each pixel (0 where none is)."""
    labels = list(results)
    probabilities = np.stack([results[label][index].probability for label in labels])
    best = probabilities.argmax(0)
    values = np.array([int(label) for label in labels])
    return np.where(probabilities.max(0) > threshold, values[best], 0)


def _uncertainty(results: dict[str, list[Segmentation]], indices: range | list[int]) -> np.ndarray:
    maps = np.stack([np.stack([results[label][i].uncertainty for i in indices]) for label in results])
    return maps[0].astype(np.float16) if len(results) == 1 else np.moveaxis(maps, 0, 1).astype(np.float16)


def _npy_base64(array: np.ndarray) -> str:
    return base64.b64encode(npy_bytes(array)).decode()


def _fractions(label_map: np.ndarray, labels: list[int]) -> dict[str, float]:
    return {str(label): float((label_map == label).mean()) for label in labels}


def _volume_result(
    volume: Volume, axis: int, labels: np.ndarray, values: list[int], volume_format: str, serving: Serving
) -> VolumeResult:
    if volume_format == "nifti":
        data = nifti_bytes(labels, volume)
    elif volume_format == "dicom-seg":
        data = dicom_seg_bytes(labels, volume, values, serving.model.name, serving.version)
    else:
        data = encode_labels(labels, values, "npy")
    return VolumeResult(
        volume=volume.name,
        shape=list(labels.shape),
        axis=axis,
        n_slices=labels.shape[axis],
        volume_format=volume_format,
        volume_base64=base64.b64encode(data).decode(),
        foreground_fraction=_fractions(labels, values),
    )


@serve.deployment
@serve.ingress(api)
class PromptSegEndpoint:
    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        alias: str,
        options: ServeOptions,
    ) -> None:
        self.model = ServedModel(tracking_uri, model_name, alias, Path(options.state_file), 16)
        self.tasks = ServedTasks(Path(options.tasks_dir), options.cache_size)
        self.max_volume_bytes = int(options.max_volume_mb * 2**20)
        limit = int(options.max_body_mb * 2**20)
        serve_gateway.configure(serve_gateway.GatewayConfig(limit, options.api_key_sha256, Path(options.audit_dir)))
        self._run_jobs.set_max_batch_size(options.max_batch_size)
        self._run_jobs.set_batch_wait_timeout_s(options.batch_wait_ms / 1e3)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def _run_jobs(self, jobs: list[SegmentJob]) -> list[dict[str, list[Segmentation]] | Exception]:
        """Jobs of concurrent requests: those against the same encodings go through the network together."""
        serve_gateway.BATCH.observe(len(jobs))
        groups: dict[Hashable, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.key, []).append(index)
        results: list[dict[str, list[Segmentation]] | Exception] = [None] * len(jobs)  # type: ignore[list-item]
        for indices in groups.values():
            try:
                outputs = await asyncio.to_thread(_run_group, [jobs[i] for i in indices])
            except Exception as error:  # handed back to the request it belongs to
                outputs = [error] * len(indices)
            for index, output in zip(indices, outputs, strict=True):
                results[index] = output
        return results

    async def _segment(self, job: SegmentJob) -> dict[str, list[Segmentation]]:
        result = await self._run_jobs(job)
        if isinstance(result, Exception):
            raise result
        serve_gateway.QUERIES.inc(len(job.slices))
        return result

    def _task_encodings(self, serving: Serving, task_id: str, ensemble: int) -> dict[str, TaskEncoding]:
        missed = []

        def encode(task: StoredTask) -> dict[str, TaskEncoding]:
            missed.append(task.task_id)
            masks = {str(label): task.masks[label] for label in task.labels}
            return serving.predictor.encode_labels(task.images, masks, task.intensity, ensemble)

        encodings = self.tasks.encoding(task_id, serving.version, ensemble, encode)
        serve_gateway.CACHE.labels("miss" if missed else "hit").inc()
        return encodings

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
        _audit(request, model_version=version, previous_version=previous)
        changed = previous != version
        return ReloadInfo(alias=self.model.alias, previous_version=previous, model_version=version, changed=changed)

    @api.post("/v1/tasks", status_code=201, responses={422: {"model": ErrorResponse}})
    async def create_task(
        self,
        request: Request,
        prompt_images: list[UploadFile] = File(...),
        prompt_masks: list[UploadFile] = File(...),
        modality: str = Form("CT"),
        window: str | None = Form(None),
        labels: str | None = Form(None),
    ) -> TaskInfo:
        wanted, ct_window = _parse_labels(labels), _parse_window(window)
        images, masks = await _read_prompts(prompt_images, prompt_masks, wanted)
        serving = self.model.current()
        intensity = NormalizationParams(modality, *(ct_window or (None, None)))
        by_label = {str(label): label_masks for label, label_masks in masks.items()}
        encodings = await asyncio.to_thread(serving.predictor.encode_labels, images, by_label, intensity, 1)
        task_id = self.tasks.put(images, masks, modality, ct_window)  # stored only once the prompts encoded
        self.tasks.encoding(task_id, serving.version, 1, lambda _: encodings)
        _audit(request, task_id=task_id, n_prompts=len(images), model_version=serving.version)
        return TaskInfo(task_id=task_id, n_prompts=len(images), modality=modality, labels=list(masks), window=ct_window)

    @api.get("/v1/tasks/{task_id}", responses={404: {"model": ErrorResponse}})
    def get_task(self, task_id: str) -> TaskInfo:
        task = self.tasks.get(task_id)
        return TaskInfo(
            task_id=task_id, n_prompts=task.n_prompts, modality=task.modality, labels=task.labels, window=task.window
        )

    @api.delete("/v1/tasks/{task_id}", status_code=204, responses={404: {"model": ErrorResponse}})
    def delete_task(self, request: Request, task_id: str) -> Response:
        self.tasks.delete(task_id)
        _audit(request, task_id=task_id)
        return Response(status_code=204)

    @api.post(
        "/v1/segment",
        responses={404: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    )
    async def segment(
        self,
        request: Request,
        queries: list[UploadFile] | None = File(None),
        volume: UploadFile | None = File(None),
        prompt_images: list[UploadFile] | None = File(None),
        prompt_masks: list[UploadFile] | None = File(None),
        task_id: str | None = Form(None),
        modality: str | None = Form(None),
        window: str | None = Form(None),
        labels: str | None = Form(None),
        axis: int | None = Form(None, ge=0, le=2),
        threshold: float = Form(0.5, gt=0.0, lt=1.0),
        ensemble: int = Form(1, ge=1, le=MAX_ENSEMBLE),
        uncertainty: bool = Form(False),
        mask_format: str = Form("png", pattern="^(png|npy)$"),
        volume_format: str | None = Form(None, pattern="^(nifti|dicom-seg|npy)$"),
    ) -> SegmentResponse:
        start = time.perf_counter()
        if task_id is not None and (prompt_images or prompt_masks):
            raise InvalidInput("task_id", "give either a task_id or prompt files, not both")
        if task_id is None and not (prompt_images and prompt_masks):
            raise InvalidInput("prompt_images", "give a task_id or prompt_images and prompt_masks")
        if bool(queries) == (volume is not None):
            raise InvalidInput("queries", "give either 2D queries or one volume")
        wanted, ct_window = _parse_labels(labels), _parse_window(window)
        serving = self.model.current()
        _audit(request, task_id=task_id, model_version=serving.version, ensemble=ensemble)

        if task_id is None:
            images, masks = await _read_prompts(prompt_images, prompt_masks, wanted)
        else:
            task_intensity, task_labels = self.tasks.describe(task_id)
            if wanted is not None and not set(wanted) <= set(task_labels):
                raise InvalidInput("labels", f"the task has labels {task_labels}, not {wanted}")
        if volume is not None:
            name = f"volume {volume.filename}"
            source = await asyncio.to_thread(read_volume, name, await _read(volume, name), self.max_volume_bytes)
            query_names: list[str] = []
        else:
            query_arrays = await _read_images(queries, "queries")
            query_names = [name for name, _ in query_arrays]
        decoded = time.perf_counter()

        if task_id is None:
            intensity = NormalizationParams(modality or "CT", *(ct_window or (None, None)))
            by_label = {str(label): label_masks for label, label_masks in masks.items()}
            encode = serving.predictor.encode_labels
            encodings = await asyncio.to_thread(encode, images, by_label, intensity, ensemble)
            key: Hashable = uuid.uuid4().hex
        else:
            intensity = task_intensity
            if modality is not None or ct_window is not None:
                intensity = NormalizationParams(modality or task_intensity.modality, *(ct_window or (None, None)))
            encodings = self._task_encodings(serving, task_id, ensemble)
            encodings = {label: encodings[label] for label in ([str(v) for v in wanted] if wanted else encodings)}
            key = (task_id, serving.version, ensemble, tuple(encodings), intensity, threshold)
        values = [int(label) for label in encodings]
        encoded = time.perf_counter()

        if volume is not None:
            if modality is None and task_id is None and source.modality:
                intensity = NormalizationParams(source.modality, *(ct_window or (None, None)))
            axis = source.default_axis if axis is None else axis
            normalized = normalize_intensity(source.array, intensity)
            slices = dataclasses.replace(source, array=normalized).slices(axis)
            job = SegmentJob(key, serving.predictor, encodings, slices, NORMALIZED, threshold)
        else:
            job = SegmentJob(key, serving.predictor, encodings, [a for _, a in query_arrays], intensity, threshold)
        results = await self._segment(job)
        segmented = time.perf_counter()

        response = SegmentResponse(
            request_id=request.scope["state"]["request_id"],
            model_name=serving.model.name,
            model_version=serving.version,
            task_id=task_id,
            n_prompts=next(iter(encodings.values())).n_prompts,
            labels=values,
            ensemble=ensemble,
            timings_ms={},
        )
        if volume is not None:
            label_maps = [_label_map(results, i, threshold) for i in range(len(job.slices))]
            volume_format = volume_format or ("dicom-seg" if source.kind == "dicom" else "nifti")
            if (volume_format, source.kind) in {("dicom-seg", "nifti"), ("nifti", "dicom")}:
                raise InvalidInput("volume_format", f"{volume_format} output needs {volume_format[:5]} input")
            result = await asyncio.to_thread(
                _volume_result, source, axis, label_volume(label_maps, axis), values, volume_format, serving
            )
            if uncertainty:
                maps = np.moveaxis(_uncertainty(results, range(len(job.slices))), 0, axis + (len(values) > 1))
                result.uncertainty_npy_base64 = _npy_base64(maps)
            response.volume = result
        else:
            for index, name in enumerate(query_names):
                label_map = _label_map(results, index, threshold)
                response.masks.append(
                    MaskResult(
                        query=name,
                        height=label_map.shape[0],
                        width=label_map.shape[1],
                        mask_format=mask_format,
                        mask_base64=base64.b64encode(encode_labels(label_map, values, mask_format)).decode(),
                        foreground_fraction=_fractions(label_map, values),
                        uncertainty_npy_base64=_npy_base64(_uncertainty(results, [index])[0]) if uncertainty else None,
                    )
                )
        done = time.perf_counter()
        response.timings_ms = {
            "decode": 1e3 * (decoded - start),
            "encode_prompts": 1e3 * (encoded - decoded),
            "segment": 1e3 * (segmented - encoded),
            "encode_result": 1e3 * (done - segmented),
        }
        _audit(request, n_queries=len(job.slices), n_labels=len(values), volume=volume is not None)
        return response


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


def options_from(settings: ServeSettings) -> ServeOptions:
    """The deploy options the serving settings (PROMPTSEG_SERVE_* variables) describe; the API key becomes its hash."""
    key = settings.api_key.get_secret_value() if settings.api_key else None
    return ServeOptions(
        tasks_dir=str(settings.tasks_dir),
        audit_dir=str(settings.audit_dir),
        state_file=str(settings.state_file),
        host=settings.host,
        port=settings.port,
        replicas=settings.replicas,
        cpus_per_replica=settings.cpus_per_replica,
        gpus_per_replica=settings.gpus_per_replica,
        max_ongoing_requests=settings.max_ongoing_requests,
        max_queued_requests=settings.max_queued_requests,
        max_batch_size=settings.max_batch_size,
        batch_wait_ms=settings.batch_wait_ms,
        max_body_mb=settings.max_body_mb,
        max_volume_mb=settings.max_volume_mb,
        cache_size=settings.cache_size,
        api_key_sha256=serve_gateway.key_digest(key) if key else None,
    )


def application(args: dict[str, str] | None = None) -> Application:
    """The application for a Serve config file or a KubeRay RayService (`import_path:
    promptseg.serving.app:application`), configured by the PROMPTSEG_* / MLFLOW_TRACKING_URI environment of the
    cluster's nodes; `args` may name another `alias`."""
    registry = RegistrySettings()
    alias = (args or {}).get("alias", "champion")
    return PromptSegEndpoint.bind(registry.tracking_uri, registry.model_name, alias, options_from(ServeSettings()))


def deploy(
    tracking_uri: str,
    model_name: str,
    alias: str,
    options: ServeOptions,
    name: str = APP_NAME,
    route_prefix: str = "/",
) -> str:
    """Run the application on the connected Ray cluster; return its base URL. Redeploying with changed options
    rolls the replicas over (Serve starts new ones before stopping old ones)."""
    if not _is_loopback(options.host) and not options.api_key_sha256:
        raise InsecureBinding(
            f"serving on {options.host} (beyond loopback) needs an API key: set PROMPTSEG_SERVE_API_KEY"
        )
    serve.start(http_options={"host": options.host, "port": options.port})
    deployment = PromptSegEndpoint.options(
        num_replicas=options.replicas,
        ray_actor_options={"num_cpus": options.cpus_per_replica, "num_gpus": options.gpus_per_replica},
        max_ongoing_requests=options.max_ongoing_requests,
        max_queued_requests=options.max_queued_requests,
    )
    serve.run(deployment.bind(tracking_uri, model_name, alias, options), name=name, route_prefix=route_prefix)
    return f"http://{options.host}:{options.port}{route_prefix.rstrip('/')}"


def undeploy() -> None:
    """Delete the application if Serve runs on this Ray instance (nothing to do otherwise)."""
    with contextlib.suppress(RayServeException):
        serve.delete(APP_NAME)
