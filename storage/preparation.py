"""The one preparation path between a scan and the network, used by preprocessing and by serving alike.

A scan read by any ingest reader (storage.readers: RAS voxel order, spacing in mm) is prepared by `PreparedVolume`:
intensities normalized (storage.harmonize), the volume resampled to the target spacing, cut into slices along one
RAS axis and each slice fitted into the square model grid keeping its physical aspect, values clipped to [0, 1].
Preprocessing writes these slices to the task store; the endpoint hands the same arrays to the network, so a model
is served pixels prepared exactly as it was trained on. `to_source` maps per-slice results back:
out of the model grid, stacked along the axis, resampled to the scan's own spacing and shape, and put back in the
voxel order its file stores.

`RECIPE_VERSION` names this recipe. Training records it in every model card and the endpoint refuses a model whose
recipe differs; bump it whenever a change here, in storage.harmonize or in a reader alters the pixels a model sees.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from storage.harmonize import (
    NormalizationParams,
    SliceGeometry,
    from_model_grid,
    normalize_intensity,
    resample_volume,
    to_model_grid,
    volume_slices,
)
from storage.readers.base import Volume
from storage.task_store import Task, TaskStore

RECIPE_VERSION = "2"


@dataclass(frozen=True)
class Preparation:
    """Everything besides the scan that fixes its model input: intensity recipe, target spacing (mm), grid size."""

    normalization: NormalizationParams
    target_spacing: tuple[float, float, float]
    resolution: int

    def grid_spacing_mm(self, axis: int, geometry: SliceGeometry) -> float:
        """The physical size of one model-grid pixel of a slice cut along `axis` (the grid keeps the aspect: its
        longer physical side spans the grid)."""
        rows, columns = self.in_plane_spacing(axis)
        return max(geometry.height * rows, geometry.width * columns) / self.resolution

    def in_plane_spacing(self, axis: int) -> tuple[float, float]:
        """The pixel spacing of a slice cut along `axis` after resampling."""
        rows, columns = (s for i, s in enumerate(self.target_spacing) if i != axis)
        return rows, columns


def model_slices(
    array: np.ndarray,
    axis: int,
    preparation: Preparation,
    indices: list[int] | None = None,
    *,
    label: bool = False,
) -> tuple[np.ndarray, SliceGeometry]:
    """The slices (all, or those at `indices`) of a volume already at the target spacing, along `axis`, in the
    model grid: images clipped to [0, 1], label maps by nearest neighbour."""
    stack = volume_slices(array, axis)
    if indices is not None:
        stack = stack[indices]
    grid, geometry = to_model_grid(
        stack.astype(np.float32), preparation.resolution, label=label, spacing=preparation.in_plane_spacing(axis)
    )
    return (grid if label else np.clip(grid, 0.0, 1.0)), geometry


def resampled_labels(volume: Volume, target_spacing: tuple[float, float, float]) -> np.ndarray:
    """A label volume at the target spacing (nearest neighbour: labels never get interpolated values)."""
    return resample_volume(volume.array.astype(np.uint8), volume.spacing, target_spacing, label=True)


@dataclass
class PreparedVolume:
    """A scan normalized and resampled under `preparation`, ready to be cut into model-grid slices."""

    source: Volume
    preparation: Preparation
    array: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        normalized = normalize_intensity(self.source.array, self.preparation.normalization)
        self.array = resample_volume(normalized, self.source.spacing, self.preparation.target_spacing)

    def slices(self, axis: int, indices: list[int] | None = None) -> tuple[np.ndarray, SliceGeometry]:
        """The model input along RAS `axis`: (K, R, R) in [0, 1], and where each slice sits in the grid."""
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        return model_slices(self.array, axis, self.preparation, indices)


def to_source(
    maps: np.ndarray, axis: int, geometry: SliceGeometry, source: Volume, preparation: Preparation
) -> np.ndarray:
    """Per-slice maps (K, R, R) on the model grid, one for every slice of `source` prepared under `preparation`
    along `axis`, as a float32 volume on the source's grid in its stored voxel order (linear interpolation;
    threshold afterwards)."""
    native = np.moveaxis(from_model_grid(maps, geometry), 0, axis)
    back = resample_volume(native, preparation.target_spacing, source.spacing, shape=source.array.shape)
    return source.in_stored_order(back)


def preparation_tags(store: TaskStore, training_tasks: list[Task]) -> dict[str, str]:
    """What a model trained on `training_tasks` of `store` must be served with, as run tags (strings) that the
    model card copies: the recipe version, the store's CT window and the median target spacing of the training
    datasets (the spacing a volume sent without one is resampled to)."""
    recorded = store.preparation()
    datasets = sorted({task.dataset for task in training_tasks})
    spacings = [store.version_info(dataset)["plan"]["target_spacing"] for dataset in datasets]
    return {
        "preparation_recipe": str(recorded.get("recipe_version", RECIPE_VERSION)),
        "ct_window": json.dumps(recorded.get("ct_window")),
        "target_spacing": json.dumps(np.median(spacings, axis=0).round(4).tolist() if spacings else None),
    }
