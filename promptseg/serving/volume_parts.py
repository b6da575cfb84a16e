"""The pieces of a segmentation that concern prompt placement and volumes: a task's label encodings grouped by
the RAS axis its prompts were cut along (`encode_task`, `group_for`), a volume's model input along one axis with
the way back onto its grid (`PreparedSlices`), one per axis, or three when the axes are fused (`volume_axes`), and
the memory that work takes beyond the decoded volume (`volume_work_bytes`, charged to the request's budget before
the volume is prepared).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from promptseg.inference.budget import Budget, Limits, OverBudget
from promptseg.inference.errors import InvalidInput
from promptseg.inference.predictor import TaskEncoding, intensity_recipe
from promptseg.inference.volume_io import Volume
from promptseg.serving.api_models import SegmentRequest
from promptseg.serving.served_model import Serving
from promptseg.serving.served_tasks import StoredTask
from storage.harmonize import SliceGeometry, resampled_shape
from storage.preparation import Preparation, PreparedVolume, to_source

# Bytes a volume's segmentation holds at its peak, per voxel, beyond the decoded scan (measured by
# bench/bench_hardening.py, see bench/RESULTS.md): on the scan's grid, a label's map put back, the running best
# probability and label, and the encoded result; on the resampled grid, the normalized volume, its slices and a
# label's map before it is resampled back. Each model-grid slice holds one float32 map per label.
SOURCE_WORK_BYTES = 24
RESAMPLED_WORK_BYTES = 16

Groups = dict[int | None, dict[str, TaskEncoding]]  # label encodings per prompt axis (None: 2D prompts)


def group_for(groups: Groups, axis: int | None, task_id: str | None) -> tuple[int | None, dict[str, TaskEncoding]]:
    """The prompts to segment slices along `axis` with: the only group, else the group cut along that axis."""
    if len(groups) == 1:
        return next(iter(groups.items()))
    if axis in groups:
        return axis, groups[axis]
    raise InvalidInput("axis", f"task {task_id} has prompts along axes {sorted(groups)}, not along axis {axis}")


def encode_task(serving: Serving, task: StoredTask, ensemble: int) -> Groups:
    """A task's label encodings, one batched call per group of prompts (an axis' prompts share a pixel spacing)."""
    recipe = intensity_recipe(task=task.intensity, model_window=serving.preparation.get("ct_window"))
    groups: Groups = {}
    for axis, indices, spacing in task.prompt_groups():
        masks = {str(label): [task.masks[label][i] for i in indices] for label in task.labels}
        images = [task.images[i] for i in indices]
        groups[axis] = serving.predictor.encode_labels(images, masks, recipe, ensemble, spacing)
    return groups


@dataclass(frozen=True)
class PromptPlacement:
    """Where prompts cut from a volume lie: each prompt's RAS axis and each axis' pixel spacing."""

    axes: list[int]
    spacing: dict[int, tuple[float, float]]


@dataclass(frozen=True)
class PreparedSlices:
    """A volume's model input along one axis, and what maps per-slice results back onto the volume's grid (the
    normalized, resampled volume they were cut from is not kept)."""

    volume: Volume
    preparation: Preparation
    axis: int
    grid: np.ndarray
    geometry: SliceGeometry

    def to_source(self, maps: list[np.ndarray]) -> np.ndarray:
        return to_source(np.stack(maps), self.axis, self.geometry, self.volume.scan, self.preparation)


def volume_axes(request: SegmentRequest, axis: int, groups: Groups) -> list[int]:
    """The axes a volume is cut along: the requested one, or all three fused when the task has prompts on each."""
    if not request.fuse_axes:
        return [axis]
    if sorted(a for a in groups if a is not None) != [0, 1, 2]:
        raise InvalidInput(
            "fuse_axes", f"fusing needs a task with prompts along axes 0, 1 and 2, not {sorted(groups, key=str)}"
        )
    if request.model_input:
        raise InvalidInput("model_input", "the model input is returned for one axis, not with fuse_axes")
    return [0, 1, 2]


def prepare(volume: Volume, preparation: Preparation, axes: list[int]) -> list[PreparedSlices]:
    """The volume prepared once and cut along each of `axes`."""
    prepared = PreparedVolume(volume.scan, preparation)
    return [PreparedSlices(volume, preparation, axis, *prepared.slices(axis)) for axis in axes]


Spacing3 = tuple[float, float, float]


def volume_work_bytes(
    shape: tuple[int, ...], spacing: Spacing3, target_spacing: Spacing3, resolution: int, axes: list[int], n_labels: int
) -> int:
    """The memory segmenting a volume of `shape` at `spacing` (mm), resampled to `target_spacing` and cut along
    `axes` onto a `resolution`² grid, for `n_labels` labels, takes beyond the decoded volume."""
    resampled = resampled_shape(shape, spacing, target_spacing)
    slices = sum(resampled[axis] for axis in axes)
    grid_pixels = resolution**2
    return (
        SOURCE_WORK_BYTES * int(np.prod(shape))
        + RESAMPLED_WORK_BYTES * int(np.prod(resampled))
        + slices * grid_pixels * 4 * (n_labels + 1)
    )


def most_slices_allowed(
    limits: Limits, width: int, itemsize: int, spacing: Spacing3, target_spacing: Spacing3, resolution: int
) -> int:
    """The most slices of width × width voxels of `itemsize` bytes at `spacing` (segmented along axis 2 for one
    label, as `volume_work_bytes` says) one request's budget lets the endpoint decode and segment."""

    def allowed(slices: int) -> bool:
        shape = (width, width, slices)
        try:
            budget = Budget(limits)
            budget.charge_volume("volume", shape, itemsize)
            budget.charge_work("volume", volume_work_bytes(shape, spacing, target_spacing, resolution, [2], 1))
        except OverBudget:
            return False
        return True

    low, high = 0, limits.max_slices
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if allowed(middle) else (low, middle - 1)
    return low


def volume_format(request: SegmentRequest, kind: str) -> str:
    """The requested result format, by default the input's own (DICOM SEG for DICOM, NIfTI for NIfTI), checked
    against the input's kind before it is decoded."""
    chosen = request.volume_format or ("dicom-seg" if kind == "dicom" else "nifti")
    if (chosen, kind) in {("dicom-seg", "nifti"), ("nifti", "dicom")}:
        raise InvalidInput("volume_format", f"{chosen} output needs {chosen[:5]} input")
    return chosen
