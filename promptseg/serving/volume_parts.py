"""The pieces of a segmentation that concern prompt placement and volumes: a task's label encodings grouped by
the RAS axis its prompts were cut along (`encode_task`, `group_for`), and a volume's model input along one axis with
the way back onto its grid (`PreparedSlices`), one per axis, or three when the axes are fused (`volume_axes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from promptseg.inference.errors import InvalidInput
from promptseg.inference.predictor import TaskEncoding, intensity_recipe
from promptseg.inference.volume_io import Volume
from promptseg.serving.api_models import SegmentRequest
from promptseg.serving.served_model import Serving
from promptseg.serving.served_tasks import StoredTask
from storage.harmonize import SliceGeometry
from storage.preparation import Preparation, PreparedVolume

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
    """A volume's model input along one axis, and what maps per-slice results back onto the volume's grid."""

    volume: PreparedVolume
    axis: int
    grid: np.ndarray
    geometry: SliceGeometry

    def to_source(self, maps: list[np.ndarray]) -> np.ndarray:
        return self.volume.to_source(np.stack(maps), self.axis, self.geometry)


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


def prepare(volume: Volume, preparation: Preparation, axis: int) -> PreparedSlices:
    prepared = PreparedVolume(volume.scan, preparation)
    grid, geometry = prepared.slices(axis)
    return PreparedSlices(prepared, axis, grid, geometry)
