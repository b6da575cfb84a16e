"""The segmentation service of one replica, the application logic behind the routes: registering tasks, and a
segment request from its `SegmentRequest` and files to each label's probability and uncertainty maps.

It picks the request's intensity recipe (`intensity_recipe`: the request's window, else the task's, else the served
model's), encodes inline prompts or takes a registered task's encodings from the cache
(promptseg.serving.served_tasks). A volume is prepared exactly as training data was (storage.preparation: RAS,
normalized, resampled to the request's target spacing or the model's, sliced, fitted to the grid), so the network
receives model-grid slices, and results go back onto the volume's grid. Query slices go to a per-replica batch
(`serve.batch`): jobs of concurrent requests against the same task encodings and intensity run as one forward
pass. A volume's slices go in chunks of `VOLUME_CHUNK`, so other requests' queries are batched between them and
the request's time budget is checked after each. Thresholding and encoding the result are
promptseg.serving.responses' job.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
from ray import serve

from promptseg.inference.budget import Budget, Limits
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
from promptseg.inference.propagation import label_values, volume_prompts
from promptseg.inference.volume_io import Volume, read_volume, volume_kind
from promptseg.serving import gateway as serve_gateway
from promptseg.serving.api_models import SegmentRequest, TaskInfo, TaskRequest, VolumeTaskRequest
from promptseg.serving.served_model import ServedModel, Serving
from promptseg.serving.served_tasks import ServedTasks, StoredTask, TaskHeader
from promptseg.serving.uploads import PromptFiles, Prompts, SegmentFiles, VolumeTaskFiles
from promptseg.serving.volume_parts import (
    Groups,
    PreparedSlices,
    PromptPlacement,
    encode_task,
    group_for,
    prepare,
    volume_axes,
    volume_format,
    volume_work_bytes,
)
from storage.harmonize import NormalizationParams
from storage.preparation import Preparation

LabelMaps = dict[str, list[Segmentation]]
VOLUME_CHUNK = 16  # slices of one volume per batch job


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
    names: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Segmented:
    """A segment request's outcome before it is encoded: each label's maps per query (2D), or per slice for each
    axis a volume was cut along (`parts`: one, or three fused; each part's `PreparedSlices` maps them back)."""

    request: SegmentRequest
    serving: Serving
    n_prompts: int
    values: list[int]
    results: LabelMaps
    query_names: list[str]
    volume: Volume | None
    parts: list[tuple[PreparedSlices, LabelMaps]]
    volume_format: str | None
    timings_ms: dict[str, float]
    names: dict[int, str]

    def volume_map(self, label: str, kind: str) -> np.ndarray:
        """One label's `kind` map ("probability" or "uncertainty") on the volume's grid, averaged over the parts."""
        total = None
        for part, maps in self.parts:
            back = part.to_source([getattr(m, kind) for m in maps[label]])
            total = back if total is None else np.add(total, back, out=total)
        return total / np.float32(len(self.parts)) if len(self.parts) > 1 else total


class SegmentationService:
    """Tasks and segmentation against the version `model` serves; `tasks` is the replica's task folder and cache."""

    def __init__(self, model: ServedModel, tasks: ServedTasks, limits: Limits) -> None:
        self.model, self.tasks, self.limits = model, tasks, limits

    def configure_batching(self, max_batch_size: int, batch_wait_s: float) -> None:
        self._run_jobs.set_max_batch_size(max_batch_size)
        self._run_jobs.set_batch_wait_timeout_s(batch_wait_s)

    def _budget(self, files: int, labels: list[int] | None, limits: Limits | None = None) -> Budget:
        """A new request's budget under `limits` (else the service's), charged with its files and label values
        (before any is read)."""
        budget = Budget(limits or self.limits)
        budget.count_files("files", files)
        budget.count_labels("labels", len(labels or ()))
        return budget

    async def create_task(self, request: TaskRequest, files: PromptFiles, audit: dict[str, object]) -> TaskInfo:
        """Decode and encode the prompts (so bad ones are refused), then store them as a task and cache the
        encodings."""
        serving = self.model.current()
        files.check_count(serving.predictor.n_max)
        budget = self._budget(len(files.images) + len(files.masks), request.labels)
        prompts = await files.prompts(request.labels, budget)
        intensity = intensity_recipe(
            request.modality, request.window, model_window=serving.preparation.get("ct_window")
        )
        names = request.structure_names(list(prompts.masks))
        return await self._register(serving, prompts, intensity, request.pixel_spacing, names, audit)

    async def create_task_from_volume(
        self, request: VolumeTaskRequest, files: VolumeTaskFiles, audit: dict[str, object]
    ) -> TaskInfo:
        """Prompt pairs cut from an annotated volume (promptseg.inference.propagation), registered as a task."""
        serving = self.model.current()
        budget = self._budget(2, request.labels)
        volume = await files.read_volume(budget)
        labels = await files.read_labels(volume, budget)
        axis = volume.default_axis if request.axis is None else request.axis
        intensity = intensity_recipe(
            request.modality,
            request.window,
            volume_modality=volume.modality,
            model_window=serving.preparation.get("ct_window"),
        )
        values = label_values(labels, request.labels)
        budget.count_labels("label_volume", len(values))
        axes = [0, 1, 2] if request.all_axes else [axis]
        n_max, annotated = serving.predictor.n_max, request.annotated or ()
        cuts = [
            await asyncio.to_thread(volume_prompts, volume.scan, labels, values, a, n_max, intensity, annotated)
            for a in axes
        ]
        prompts = Prompts(
            [image for cut in cuts for image in cut.images],
            {value: [mask for cut in cuts for mask in cut.masks[value]] for value in values},
        )
        placement = PromptPlacement(
            [cut.axis for cut in cuts for _ in cut.indices], {cut.axis: cut.pixel_spacing for cut in cuts}
        )
        audit.update(axes=axes, prompt_slices=len(prompts.images))
        names = request.structure_names(values)
        return await self._register(serving, prompts, cuts[0].intensity, placement, names, audit)

    async def _register(
        self,
        serving: Serving,
        prompts: Prompts,
        intensity: NormalizationParams,
        placement: Spacing | PromptPlacement,
        names: dict[int, str],
        audit: dict[str, object],
    ) -> TaskInfo:
        """Store the prompts as a task (2D prompts with one pixel spacing, or prompts cut from a volume placed by
        axis), then encode them by the task's own rule (so bad ones are refused now) and cache the encodings."""
        window = (intensity.low, intensity.high) if intensity.low is not None else None
        if isinstance(placement, PromptPlacement):
            layout = {"prompt_axes": placement.axes, "axis_spacing": placement.spacing}
        else:
            layout = {"pixel_spacing": placement}
        task = StoredTask("", intensity.modality, window, prompts.images, prompts.masks, **layout)
        encodings = await asyncio.to_thread(encode_task, serving, task, 1)
        task_id = self.tasks.put(prompts.images, prompts.masks, intensity.modality, window, names=names, **layout)
        self.tasks.encoding(task_id, serving.version, 1, lambda _: encodings)
        audit.update(task_id=task_id, n_prompts=len(prompts.images), model_version=serving.version)
        return self.task_info(task_id)

    def task_info(self, task_id: str) -> TaskInfo:
        return _task_info(self.tasks.header(task_id))

    def list_tasks(self) -> list[TaskInfo]:
        return [_task_info(header) for header in self.tasks.headers()]

    def delete_task(self, task_id: str) -> None:
        self.tasks.delete(task_id)

    async def segment(
        self, request: SegmentRequest, files: SegmentFiles, audit: dict[str, object], limits: Limits | None = None
    ) -> Segmented:
        """Decode the files, encode the prompts (or take the task's encodings) and segment every query or slice,
        within the request's budget (`limits`, a job's, else the service's)."""
        start = time.perf_counter()
        serving = self.model.current()
        audit.update(task_id=request.task_id, model_version=serving.version, ensemble=request.ensemble)
        budget = self._budget(files.count, request.labels, limits)
        inputs = await self._decode(request, files, budget)
        decoded = time.perf_counter()
        budget.check_time("prompts")

        if inputs.prompts is not None:  # inline prompts take the request's recipe, never the volume's
            encode = serving.predictor.encode_labels
            recipe = intensity_recipe(
                request.modality, request.window, model_window=serving.preparation.get("ct_window")
            )
            args = inputs.prompts.images, inputs.prompts.by_label(), recipe, request.ensemble, request.pixel_spacing
            groups: Groups = {None: await asyncio.to_thread(encode, *args)}
            encodings_key: Hashable = uuid.uuid4().hex
        else:
            groups = self._task_encodings(serving, request.task_id, request.ensemble)
            if request.labels:
                wanted = [str(value) for value in request.labels]
                groups = {axis: {label: group[label] for label in wanted} for axis, group in groups.items()}
            encodings_key = (request.task_id, serving.version, request.ensemble, tuple(request.labels or ()))
        encoded = time.perf_counter()

        volume = inputs.volume
        intensity = intensity_recipe(
            request.modality,
            request.window,
            task=inputs.task_intensity,
            volume_modality=volume.modality if volume is not None else None,
            model_window=serving.preparation.get("ct_window"),
        )
        results: LabelMaps = {}
        parts: list[tuple[PreparedSlices, LabelMaps]] = []
        if volume is not None:
            spacing = request.target_spacing or serving.preparation.get("target_spacing") or volume.scan.spacing
            preparation = Preparation(intensity, tuple(spacing), serving.predictor.resolution)
            axes = volume_axes(request, inputs.axis, groups)
            n_labels = len(next(iter(groups.values())))
            scan = volume.scan
            work = volume_work_bytes(
                scan.array.shape, scan.spacing, tuple(spacing), preparation.resolution, axes, n_labels
            )
            budget.charge_work(volume.name, work)
            for prepared in await asyncio.to_thread(prepare, volume, preparation, axes):
                group, encodings = group_for(groups, prepared.axis, request.task_id)
                maps: LabelMaps = {}
                for first in range(0, len(prepared.grid), VOLUME_CHUNK):
                    budget.check_time("volume")
                    chunk = list(prepared.grid[first : first + VOLUME_CHUNK])
                    job = SegmentJob((encodings_key, group), serving.predictor, encodings, chunk, MODEL_GRID)
                    for label, label_maps in (await self._segment(job)).items():
                        maps.setdefault(label, []).extend(label_maps)
                parts.append((prepared, maps))
            n_queries = sum(len(prepared.grid) for prepared, _ in parts)
        else:
            group, encodings = group_for(groups, request.axis if request.axis is not None else 2, request.task_id)
            queries = [a for _, a in inputs.queries]
            job = SegmentJob(
                (encodings_key, group), serving.predictor, encodings, queries, intensity, request.pixel_spacing
            )
            results = await self._segment(job)
            n_queries = len(queries)
        segmented = time.perf_counter()
        values = [int(label) for label in encodings]
        audit.update(n_queries=n_queries, n_labels=len(values), volume=volume is not None)
        return Segmented(
            request=request,
            serving=serving,
            n_prompts=sum(next(iter(g.values())).n_prompts for g in groups.values()),
            values=values,
            results=results,
            query_names=[name for name, _ in inputs.queries],
            volume=volume,
            parts=parts,
            volume_format=inputs.volume_format,
            names={value: inputs.names.get(value, f"label {value}") for value in values},
            timings_ms={
                "decode": 1e3 * (decoded - start),
                "encode_prompts": 1e3 * (encoded - decoded),
                "segment": 1e3 * (segmented - encoded),
            },
        )

    async def _decode(self, request: SegmentRequest, files: SegmentFiles, budget: Budget) -> _Inputs:
        """The inline prompts (or the registered task's recipe, its label values checked), then the queries."""
        inputs = _Inputs()
        if request.task_id is None:
            files.prompts.check_count(self.model.current().predictor.n_max)
            inputs.prompts = await files.prompts.prompts(request.labels, budget)
        else:
            inputs.task_intensity, header = self.tasks.describe(request.task_id)
            inputs.names = header.names
            if request.labels is not None and not set(request.labels) <= set(header.labels):
                raise InvalidInput("labels", f"the task has labels {header.labels}, not {request.labels}")
        if files.volume is not None:
            name, data = await files.volume_upload()
            inputs.volume_format = volume_format(request, volume_kind(name, data))
            for_seg = inputs.volume_format == "dicom-seg"
            inputs.volume = await asyncio.to_thread(read_volume, name, data, budget, for_seg)
            inputs.axis = inputs.volume.default_axis if request.axis is None else request.axis
        else:
            inputs.queries = await files.query_images(budget)
        return inputs

    def _task_encodings(self, serving: Serving, task_id: str, ensemble: int) -> Groups:
        missed = []

        def encode(task: StoredTask) -> Groups:
            missed.append(task.task_id)
            return encode_task(serving, task, ensemble)

        groups = self.tasks.encoding(task_id, serving.version, ensemble, encode)
        serve_gateway.CACHE.labels("miss" if missed else "hit").inc()
        return groups

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
        serve_gateway.BATCHED.inc(len(jobs))
        groups: dict[Hashable, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.batch_key, []).append(index)
        results: list[LabelMaps | Exception] = [None] * len(jobs)  # type: ignore[list-item]
        for indices in groups.values():
            outputs = await run_isolated([jobs[i] for i in indices])
            for index, output in zip(indices, outputs, strict=True):
                results[index] = output
        return results


async def run_isolated(jobs: list[SegmentJob]) -> list[LabelMaps | Exception]:
    """The jobs' results through one forward pass; if that fails, each job alone, so an error goes back only to
    the request whose slices caused it and the others are answered."""
    try:
        return await asyncio.to_thread(_run_group, jobs)
    except Exception as error:
        if len(jobs) == 1:
            return [error]
    return [output for job in jobs for output in await run_isolated([job])]


def _task_info(header: TaskHeader) -> TaskInfo:
    return TaskInfo(
        task_id=header.task_id,
        n_prompts=header.n_prompts,
        modality=header.modality,
        labels=header.labels,
        names={str(value): name for value, name in header.names.items()},
        window=header.window,
        pixel_spacing=header.pixel_spacing,
        axes=header.axes,
    )
