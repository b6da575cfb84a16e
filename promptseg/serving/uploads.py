"""The multipart bodies of POST /v1/tasks, /v1/tasks/from-volume and /v1/segment (their `api_models` request plus
the files) and the reading of the uploaded files into arrays: 2D images, prompt masks by label value, a volume and
its label volume. Every problem raises
`InvalidInput` naming the file.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from fastapi import UploadFile
from pydantic import ConfigDict, Field, model_validator

from promptseg.inference.errors import InvalidInput
from promptseg.inference.image_io import decode_image, label_masks
from promptseg.inference.volume_io import Volume, read_label_upload, read_volume
from promptseg.serving.api_models import SegmentRequest, TaskRequest, VolumeTaskRequest


async def _read(upload: UploadFile, name: str) -> bytes:
    data = await upload.read()
    if not data:
        raise InvalidInput(name, "the file is empty")
    return data


async def read_images(files: list[UploadFile], field: str) -> list[tuple[str, np.ndarray]]:
    """(name, array) of each uploaded 2D image, named `field[index] file name`."""
    named = [(f"{field}[{i}] {f.filename}", f) for i, f in enumerate(files)]
    return [(name, decode_image(name, await _read(upload, name))) for name, upload in named]


@dataclass(frozen=True)
class Prompts:
    """Prompt images and, per label value, one binary mask for each image."""

    images: list[np.ndarray]
    masks: dict[int, list[np.ndarray]]

    def by_label(self) -> dict[str, list[np.ndarray]]:
        """The masks keyed the way the predictor names labels."""
        return {str(label): masks for label, masks in self.masks.items()}


async def read_prompts(images: list[UploadFile], masks: list[UploadFile], labels: list[int] | None) -> Prompts:
    """Prompt pairs; with `labels`, each mask is a label map split into one binary mask per wanted value."""
    arrays = [array for _, array in await read_images(images, "prompt_images")]
    by_label: dict[int, list[np.ndarray]] = {}
    for name, array in await read_images(masks, "prompt_masks"):
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

    async def prompts(self) -> Prompts:
        return await read_prompts(self.prompt_images, self.prompt_masks, self.labels)


@dataclass(frozen=True)
class SegmentFiles:
    """The files of a segment request: 2D queries or one volume, and inline prompt pairs unless it names a task."""

    queries: list[UploadFile]
    volume: UploadFile | None
    prompt_images: list[UploadFile]
    prompt_masks: list[UploadFile]

    async def prompts(self, labels: list[int] | None) -> Prompts:
        return await read_prompts(self.prompt_images, self.prompt_masks, labels)

    async def query_images(self) -> list[tuple[str, np.ndarray]]:
        return await read_images(self.queries, "queries")

    async def read_volume(self, max_bytes: int) -> Volume:
        """The uploaded volume (NIfTI, or a zip of one DICOM series), refused beyond `max_bytes` decoded."""
        return await _read_volume(self.volume, max_bytes)


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
        return SegmentFiles(self.queries or [], self.volume, self.prompt_images or [], self.prompt_masks or [])


async def _read_volume(upload: UploadFile, max_bytes: int) -> Volume:
    name = f"volume {upload.filename}"
    return await asyncio.to_thread(read_volume, name, await _read(upload, name), max_bytes)


@dataclass(frozen=True)
class VolumeTaskFiles:
    """A scan and its label volume, on the same grid."""

    volume: UploadFile
    label_volume: UploadFile

    async def read_volume(self, max_bytes: int) -> Volume:
        return await _read_volume(self.volume, max_bytes)

    async def read_labels(self, volume: Volume, max_bytes: int) -> np.ndarray:
        name = f"label_volume {self.label_volume.filename}"
        data = await _read(self.label_volume, name)
        return await asyncio.to_thread(read_label_upload, name, data, volume, max_bytes)


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
