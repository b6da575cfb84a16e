"""The segmentation service of one replica, the application logic behind the routes: registering tasks, and a
segment request from its `SegmentRequest` and files to each label's probability and uncertainty maps.

It picks the request's intensity recipe (`intensity_recipe`: the request's window, else the task's, else the served
model's), encodes inline prompts or takes a registered task's encodings from the cache
(promptseg.serving.served_tasks). A volume is prepared exactly as training data was (storage.preparation: RAS,
normalized, resampled to the request's target spacing or the model's, sliced, fitted to the grid), so the network
receives model-grid slices, and results go back onto the volume's grid. Query slices go to a per-replica batch
(`serve.batch`): jobs of concurrent requests against the same task encodings and intensity run as one forward
pass. Thresholding and encoding the result are promptseg.serving.responses' job.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
from ray import serve

from promptseg.inference.errors import InvalidInput
from promptseg.inference.predictor import (
    MODEL_GRID,
    Intensity,
    Predictor,
    Segmentation,
    Spacing,
    TaskEncoding,
    intensity_recipe,
)
from promptseg.inference.volume_io import Volume
from promptseg.serving import gateway as serve_gateway
from promptseg.serving.api_models import SegmentRequest, TaskInfo, TaskRequest
from promptseg.serving.served_model import ServedModel, Serving
from promptseg.serving.served_tasks import ServedTasks, StoredTask
from promptseg.serving.uploads import Prompts, SegmentFiles
from storage.harmonize import NormalizationParams, SliceGeometry
from storage.preparation import Preparation, PreparedVolume

LabelMaps = dict[str, list[Segmentation]]


@dataclass(frozen=True)
class SegmentJob:
    """Query slices against one set of label encodings. `encodings_key` is equal for jobs against the same
    encodings (a registered task's, for one model version, ensemble size and label set), unique otherwise."""

    encodings_key: Hashable
    predictor: Predictor
    encodings: dict[str, TaskEncoding]
    slices: list[np.ndarray]
    intensity: Intensity
    spacing: Spacing = None

    @property
    def batch_key(self) -> Hashable:
        """Jobs with equal keys share a forward pass."""
        return self.encodings_key, self.intensity, self.spacing


def _run_group(jobs: list[SegmentJob]) -> list[LabelMaps]:
    first = jobs[0]
    slices = [s for job in jobs for s in job.slices]
    results = first.predictor.segment_labels(first.encodings, slices, first.intensity, first.spacing)
    split, start = [], 0
    for job in jobs:
        split.append({label: maps[start : start + len(job.slices)] for label, maps in results.items()})
        start += len(job.slices)
    return split


@dataclass
class _Inputs:
    """A segment request's decoded files: inline prompts or the task's recipe; 2D queries or a volume."""

    prompts: Prompts | None = None
    task_intensity: NormalizationParams | None = None
    queries: list[tuple[str, np.ndarray]] = field(default_factory=list)
    volume: Volume | None = None
    axis: int | None = None
    volume_format: str | None = None


@dataclass(frozen=True)
class PreparedSlices:
    """A volume's model input along one axis, and what maps per-slice results back onto the volume's grid."""

    volume: PreparedVolume
    axis: int
    grid: np.ndarray
    geometry: SliceGeometry

    def to_source(self, maps: list[np.ndarray]) -> np.ndarray:
        return self.volume.to_source(np.stack(maps), self.axis, self.geometry)


@dataclass(frozen=True)
class Segmented:
    """A segment request's outcome before it is encoded: each label's maps per query (2D) or per slice (volume,
    on the model grid: `prepared` maps them back)."""

    request: SegmentRequest
    serving: Serving
    n_prompts: int
    values: list[int]
    results: LabelMaps
    query_names: list[str]
    volume: Volume | None
    prepared: PreparedSlices | None
    volume_format: str | None
    timings_ms: dict[str, float]

    @property
    def axis(self) -> int | None:
        return None if self.prepared is None else self.prepared.axis


class SegmentationService:
    """Tasks and segmentation against the version `model` serves; `tasks` is the replica's task folder and cache."""

    def __init__(self, model: ServedModel, tasks: ServedTasks, max_volume_bytes: int) -> None:
        self.model, self.tasks, self.max_volume_bytes = model, tasks, max_volume_bytes

    def configure_batching(self, max_batch_size: int, batch_wait_s: float) -> None:
        self._run_jobs.set_max_batch_size(max_batch_size)
        self._run_jobs.set_batch_wait_timeout_s(batch_wait_s)

    async def create_task(self, request: TaskRequest, prompts: Prompts, audit: dict[str, object]) -> TaskInfo:
        """Encode the prompts (so bad ones are refused), then store them as a task and cache the encodings."""
        serving = self.model.current()
        intensity = intensity_recipe(
            request.modality, request.window, model_window=serving.preparation.get("ct_window")
        )
        encode = serving.predictor.encode_labels
        args = prompts.images, prompts.by_label(), intensity, 1, request.pixel_spacing
        encodings = await asyncio.to_thread(encode, *args)
        task_id = self.tasks.put(prompts.images, prompts.masks, request.modality, request.window, request.pixel_spacing)
        self.tasks.encoding(task_id, serving.version, 1, lambda _: encodings)
        audit.update(task_id=task_id, n_prompts=len(prompts.images), model_version=serving.version)
        return TaskInfo(
            task_id=task_id,
            n_prompts=len(prompts.images),
            modality=request.modality,
            labels=list(prompts.masks),
            window=request.window,
        )

    def task_info(self, task_id: str) -> TaskInfo:
        task = self.tasks.get(task_id)
        return TaskInfo(
            task_id=task_id, n_prompts=task.n_prompts, modality=task.modality, labels=task.labels, window=task.window
        )

    def delete_task(self, task_id: str) -> None:
        self.tasks.delete(task_id)

    async def segment(self, request: SegmentRequest, files: SegmentFiles, audit: dict[str, object]) -> Segmented:
        """Decode the files, encode the prompts (or take the task's encodings) and segment every query or slice."""
        start = time.perf_counter()
        serving = self.model.current()
        audit.update(task_id=request.task_id, model_version=serving.version, ensemble=request.ensemble)
        inputs = await self._decode(request, files)
        decoded = time.perf_counter()

        if inputs.prompts is not None:  # inline prompts take the request's recipe, never the volume's
            encode = serving.predictor.encode_labels
            recipe = intensity_recipe(
                request.modality, request.window, model_window=serving.preparation.get("ct_window")
            )
            args = inputs.prompts.images, inputs.prompts.by_label(), recipe, request.ensemble, request.pixel_spacing
            encodings = await asyncio.to_thread(encode, *args)
            encodings_key: Hashable = uuid.uuid4().hex
        else:
            encodings = self._task_encodings(serving, request.task_id, request.ensemble)
            wanted = [str(value) for value in request.labels] if request.labels else list(encodings)
            encodings = {label: encodings[label] for label in wanted}
            encodings_key = (request.task_id, serving.version, request.ensemble, tuple(encodings))
        encoded = time.perf_counter()

        volume = inputs.volume
        model_preparation = serving.preparation
        intensity = intensity_recipe(
            request.modality,
            request.window,
            task=inputs.task_intensity,
            volume_modality=volume.modality if volume is not None else None,
            model_window=model_preparation.get("ct_window"),
        )
        prepared = None
        if volume is not None:
            spacing = request.target_spacing or model_preparation.get("target_spacing") or volume.scan.spacing
            preparation = Preparation(intensity, tuple(spacing), serving.predictor.resolution)
            prepared = await asyncio.to_thread(_prepare, volume, preparation, inputs.axis)
            job = SegmentJob(encodings_key, serving.predictor, encodings, list(prepared.grid), MODEL_GRID)
        else:
            queries = [a for _, a in inputs.queries]
            job = SegmentJob(encodings_key, serving.predictor, encodings, queries, intensity, request.pixel_spacing)
        results = await self._segment(job)
        segmented = time.perf_counter()
        values = [int(label) for label in encodings]
        audit.update(n_queries=len(job.slices), n_labels=len(values), volume=volume is not None)
        return Segmented(
            request=request,
            serving=serving,
            n_prompts=next(iter(encodings.values())).n_prompts,
            values=values,
            results=results,
            query_names=[name for name, _ in inputs.queries],
            volume=volume,
            prepared=prepared,
            volume_format=inputs.volume_format,
            timings_ms={
                "decode": 1e3 * (decoded - start),
                "encode_prompts": 1e3 * (encoded - decoded),
                "segment": 1e3 * (segmented - encoded),
            },
        )

    async def _decode(self, request: SegmentRequest, files: SegmentFiles) -> _Inputs:
        """The inline prompts (or the registered task's recipe, its label values checked), then the queries."""
        inputs = _Inputs()
        if request.task_id is None:
            inputs.prompts = await files.prompts(request.labels)
        else:
            inputs.task_intensity, task_labels = self.tasks.describe(request.task_id)
            if request.labels is not None and not set(request.labels) <= set(task_labels):
                raise InvalidInput("labels", f"the task has labels {task_labels}, not {request.labels}")
        if files.volume is not None:
            inputs.volume = await files.read_volume(self.max_volume_bytes)
            inputs.axis = inputs.volume.default_axis if request.axis is None else request.axis
            inputs.volume_format = _volume_format(request, inputs.volume)
        else:
            inputs.queries = await files.query_images()
        return inputs

    def _task_encodings(self, serving: Serving, task_id: str, ensemble: int) -> dict[str, TaskEncoding]:
        missed = []

        def encode(task: StoredTask) -> dict[str, TaskEncoding]:
            missed.append(task.task_id)
            masks = {str(label): task.masks[label] for label in task.labels}
            recipe = intensity_recipe(task=task.intensity, model_window=serving.preparation.get("ct_window"))
            return serving.predictor.encode_labels(task.images, masks, recipe, ensemble, task.pixel_spacing)

        encodings = self.tasks.encoding(task_id, serving.version, ensemble, encode)
        serve_gateway.CACHE.labels("miss" if missed else "hit").inc()
        return encodings

    async def _segment(self, job: SegmentJob) -> LabelMaps:
        result = await self._run_jobs(job)
        if isinstance(result, Exception):
            raise result
        serve_gateway.QUERIES.inc(len(job.slices))
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def _run_jobs(self, jobs: list[SegmentJob]) -> list[LabelMaps | Exception]:
        """Jobs of concurrent requests: those with the same batch key go through the network together."""
        serve_gateway.BATCH.observe(len(jobs))
        groups: dict[Hashable, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.batch_key, []).append(index)
        results: list[LabelMaps | Exception] = [None] * len(jobs)  # type: ignore[list-item]
        for indices in groups.values():
            try:
                outputs = await asyncio.to_thread(_run_group, [jobs[i] for i in indices])
            except Exception as error:  # handed back to the request it belongs to
                outputs = [error] * len(indices)
            for index, output in zip(indices, outputs, strict=True):
                results[index] = output
        return results


def _prepare(volume: Volume, preparation: Preparation, axis: int) -> PreparedSlices:
    prepared = PreparedVolume(volume.scan, preparation)
    grid, geometry = prepared.slices(axis)
    return PreparedSlices(prepared, axis, grid, geometry)


def _volume_format(request: SegmentRequest, volume: Volume) -> str:
    """The requested result format, by default the input's own (DICOM SEG for DICOM, NIfTI for NIfTI)."""
    volume_format = request.volume_format or ("dicom-seg" if volume.kind == "dicom" else "nifti")
    if (volume_format, volume.kind) in {("dicom-seg", "nifti"), ("nifti", "dicom")}:
        raise InvalidInput("volume_format", f"{volume_format} output needs {volume_format[:5]} input")
    return volume_format
