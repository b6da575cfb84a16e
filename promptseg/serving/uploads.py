"""The multipart bodies of POST /v1/tasks, /v1/tasks/from-volume and /v1/segment (their `api_models` request plus
the files) and the reading of the uploaded files into arrays: 2D images, prompt masks by label value, a volume and
its label volume, each charged to the request's `Budget` (promptseg.inference.budget) from its header before its
pixels are decoded. Every problem raises `InvalidInput` naming the file.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from fastapi import UploadFile
from pydantic import ConfigDict, Field, model_validator

from promptseg.inference.budget import Budget
from promptseg.inference.errors import InvalidInput
from promptseg.inference.image_io import decode_image, label_masks
from promptseg.inference.volume_io import Volume, read_label_upload, read_volume
from promptseg.serving.api_models import SegmentRequest, TaskRequest, VolumeTaskRequest


async def _read(upload: UploadFile, name: str) -> bytes:
    data = await upload.read()
    if not data:
        raise InvalidInput(name, "the file is empty")
    return data


async def read_images(files: list[UploadFile], field: str, budget: Budget) -> list[tuple[str, np.ndarray]]:
    """(name, array) of each uploaded 2D image, named `field[index] file name`."""
    named = [(f"{field}[{i}] {f.filename}", f) for i, f in enumerate(files)]
    return [(name, decode_image(name, await _read(upload, name), budget)) for name, upload in named]


@dataclass(frozen=True)
class Prompts:
    """Prompt images and, per label value, one binary mask for each image."""

    images: list[np.ndarray]
    masks: dict[int, list[np.ndarray]]

    def by_label(self) -> dict[str, list[np.ndarray]]:
        """The masks keyed the way the predictor names labels."""
        return {str(label): masks for label, masks in self.masks.items()}


@dataclass(frozen=True)
class PromptFiles:
    """Uploaded prompt pairs: images and their masks, in order."""

    images: list[UploadFile]
    masks: list[UploadFile]

    def check_count(self, n_max: int) -> None:
        """Refuse more pairs than the model reads (`n_max`), or unpaired files, before any is decoded."""
        if len(self.images) > n_max:
            raise InvalidInput("prompt_images", f"at most {n_max} prompts, got {len(self.images)}")
        if len(self.images) != len(self.masks):
            raise InvalidInput("prompt_masks", f"{len(self.masks)} masks for {len(self.images)} prompt images")

    async def prompts(self, labels: list[int] | None, budget: Budget) -> Prompts:
        """Prompt pairs; with `labels`, each mask is a label map split into one binary mask per wanted value."""
        arrays = [array for _, array in await read_images(self.images, "prompt_images", budget)]
        by_label: dict[int, list[np.ndarray]] = {}
        for name, array in await read_images(self.masks, "prompt_masks", budget):
            for label, mask in label_masks(name, array, labels).items():
                by_label.setdefault(label, []).append(mask)
        return Prompts(arrays, by_label)


class TaskForm(TaskRequest):
    """POST /v1/tasks's body: the task's fields and its prompt pairs."""

    model_config = ConfigDict(extra="ignore")

    prompt_images: list[UploadFile] = Field(description="the prompt images (PNG or NPY), one file per prompt")
    prompt_masks: list[UploadFile] = Field(description="their masks (binary, or label maps with `labels`), in order")

    def request(self) -> TaskRequest:
        return TaskRequest(**self.model_dump(include=set(TaskRequest.model_fields)))

    def files(self) -> PromptFiles:
        return PromptFiles(self.prompt_images, self.prompt_masks)


@dataclass(frozen=True)
class SegmentFiles:
    """The files of a segment request: 2D queries or one volume, and inline prompt pairs unless it names a task."""

    queries: list[UploadFile]
    volume: UploadFile | None
    prompts: PromptFiles

    @property
    def count(self) -> int:
        return len(self.queries) + (self.volume is not None) + len(self.prompts.images) + len(self.prompts.masks)

    async def query_images(self, budget: Budget) -> list[tuple[str, np.ndarray]]:
        return await read_images(self.queries, "queries", budget)

    async def volume_upload(self) -> tuple[str, bytes]:
        """The uploaded volume's name and bytes (NIfTI, or a zip of one DICOM series)."""
        name = f"volume {self.volume.filename}"
        return name, await _read(self.volume, name)


class SegmentForm(SegmentRequest):
    """POST /v1/segment's body: the request's fields and its files, checked to name one source of prompts (a task
    or prompt pairs) and one kind of query (2D images or a volume)."""

    model_config = ConfigDict(extra="ignore")

    queries: list[UploadFile] | None = Field(None, description="2D query images (PNG or NPY)")
    volume: UploadFile | None = Field(None, description="one volume: NIfTI, or a zip of one DICOM series")
    prompt_images: list[UploadFile] | None = Field(None, description="inline prompt images, without a task_id")
    prompt_masks: list[UploadFile] | None = Field(None, description="their masks, in the same order")

    @model_validator(mode="after")
    def _one_source_and_one_kind(self) -> SegmentForm:
        if self.task_id is not None and (self.prompt_images or self.prompt_masks):
            raise InvalidInput("task_id", "give either a task_id or prompt files, not both")
        if self.task_id is None and not (self.prompt_images and self.prompt_masks):
            raise InvalidInput("prompt_images", "give a task_id or prompt_images and prompt_masks")
        if bool(self.queries) == (self.volume is not None):
            raise InvalidInput("queries", "give either 2D queries or one volume")
        return self

    def request(self) -> SegmentRequest:
        return SegmentRequest(**self.model_dump(include=set(SegmentRequest.model_fields)))

    def files(self) -> SegmentFiles:
        return SegmentFiles(
            self.queries or [], self.volume, PromptFiles(self.prompt_images or [], self.prompt_masks or [])
        )


async def _read_volume(upload: UploadFile, budget: Budget) -> Volume:
    name = f"volume {upload.filename}"
    return await asyncio.to_thread(read_volume, name, await _read(upload, name), budget)


@dataclass(frozen=True)
class VolumeTaskFiles:
    """A scan and its label volume, on the same grid."""

    volume: UploadFile
    label_volume: UploadFile

    async def read_volume(self, budget: Budget) -> Volume:
        return await _read_volume(self.volume, budget)

    async def read_labels(self, volume: Volume, budget: Budget) -> np.ndarray:
        name = f"label_volume {self.label_volume.filename}"
        data = await _read(self.label_volume, name)
        return await asyncio.to_thread(read_label_upload, name, data, volume, budget)


class VolumeTaskForm(VolumeTaskRequest):
    """POST /v1/tasks/from-volume's body: the task's fields, the scan and its label volume."""

    model_config = ConfigDict(extra="ignore")

    volume: UploadFile = Field(description="the scan: NIfTI, or a zip of one DICOM series")
    label_volume: UploadFile = Field(
        description="its label volume on the same grid: NIfTI, a zipped DICOM series, or a DICOM SEG of the series"
    )

    def request(self) -> VolumeTaskRequest:
        return VolumeTaskRequest(**self.model_dump(include=set(VolumeTaskRequest.model_fields)))

    def files(self) -> VolumeTaskFiles:
        return VolumeTaskFiles(self.volume, self.label_volume)
