"""The harmonization recipe: raw pixels → model input in [0, 1] at the store's resolution, and back.

One recipe serves preprocessing, training, evaluation and serving, so a model never sees pixels prepared
differently from the ones it was trained on.

- Intensities (modality-aware): CT is clipped to the dataset's foreground 0.5/99.5 percentiles (from the
  fingerprint) or a configured window; MR and other modalities to each image's own 0.5/99.5 percentiles of
  non-zero pixels; 8-bit images are divided by 255. Then, unlike nnU-Net's z-score and as UniverSeg's data does,
  the clipped range is scaled to [0, 1]: in-context models compare prompt and query pixels directly, and a fixed
  range keeps images from different centers and modalities on one scale.
- Spacing: volumes are resampled with SimpleITK to the dataset's target spacing (nnU-Net's rule, from the
  fingerprint): linear for images, nearest neighbour for label maps so labels never get interpolated values.
- Geometry: a 2D slice is resized keeping its physical aspect ratio and zero-padded (centered) into a
  `resolution`×`resolution` grid (bilinear with antialiasing for images, nearest for label maps).
  `SliceGeometry` records where it sits, so a predicted mask is mapped back to the slice's native grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class NormalizationParams:
    """How intensities of one dataset become [0, 1]; `low`/`high` None means per-image percentiles."""

    modality: str
    low: float | None = None
    high: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def normalization_for(
    modality: str, foreground_percentiles: tuple[float, float] | None, ct_window: tuple[float, float] | None = None
) -> NormalizationParams:
    """Pick the recipe for a dataset: CT uses a window or the dataset-wide foreground percentiles."""
    if modality.upper() == "CT":
        low, high = ct_window or foreground_percentiles or (None, None)
        return NormalizationParams("CT", low, high)
    return NormalizationParams(modality)


def normalize_intensity(image: np.ndarray, params: NormalizationParams) -> np.ndarray:
    """Map an image of any dtype to float32 in [0, 1] following `params`."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    image = image.astype(np.float32)
    if params.low is not None and params.high is not None:
        low, high = params.low, params.high
    else:
        values = image[image != 0]
        low, high = np.percentile(values if values.size else image, PERCENTILES)
    if high <= low:
        return np.zeros_like(image)
    return np.clip((image - low) / (high - low), 0.0, 1.0)


@dataclass(frozen=True)
class SliceGeometry:
    """Native size of a 2D slice and the box it occupies in the square model grid."""

    height: int
    width: int
    top: int
    left: int
    box_height: int
    box_width: int


def _resize(array: torch.Tensor, size: tuple[int, int], label: bool) -> torch.Tensor:
    if label:
        return F.interpolate(array, size=size, mode="nearest-exact")
    return F.interpolate(array, size=size, mode="bilinear", align_corners=False, antialias=True)


def to_model_grid(
    slices: np.ndarray, resolution: int, *, label: bool = False, spacing: tuple[float, float] = (1.0, 1.0)
) -> tuple[np.ndarray, SliceGeometry]:
    """Fit a stack of 2D slices (K, H, W) with pixel `spacing` into a square resolution×resolution grid.

    The slices keep their physical aspect ratio: the longer physical side spans the grid, the other is centered
    with zero padding. One interpolation only (resize, then pad).
    """
    _, height, width = slices.shape
    extent_h, extent_w = height * spacing[0], width * spacing[1]
    scale = resolution / max(extent_h, extent_w)
    box_h = min(resolution, max(1, round(extent_h * scale)))
    box_w = min(resolution, max(1, round(extent_w * scale)))
    top, left = (resolution - box_h) // 2, (resolution - box_w) // 2
    resized = _resize(torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None], (box_h, box_w), label)
    grid = np.zeros((slices.shape[0], resolution, resolution), dtype=np.float32)
    grid[:, top : top + box_h, left : left + box_w] = resized[:, 0].numpy()
    return grid, SliceGeometry(height, width, top, left, box_h, box_w)


def from_model_grid(slices: np.ndarray, geometry: SliceGeometry, *, label: bool = False) -> np.ndarray:
    """Invert `to_model_grid`: crop the slice's box out of the grid and resize it back to the native size."""
    g = geometry
    box = np.ascontiguousarray(slices[:, g.top : g.top + g.box_height, g.left : g.left + g.box_width], np.float32)
    return _resize(torch.from_numpy(box)[:, None], (g.height, g.width), label)[:, 0].numpy()


def resampled_shape(
    shape: tuple[int, ...], spacing: tuple[float, float, float], target: tuple[float, float, float]
) -> list[int]:
    """The grid size a volume of `shape` at `spacing` gets when resampled to `target` spacing."""
    return [max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True)]


def resample_volume(
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    target: tuple[float, float, float],
    *,
    label: bool = False,
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Resample a RAS (x, y, z) array from `spacing` to `target` spacing (mm) with SimpleITK; the first voxels of
    both grids coincide. The output has `resampled_shape`, or `shape` when given (to go back onto a source grid)."""
    size = list(shape) if shape is not None else resampled_shape(volume.shape, spacing, target)
    if np.allclose(spacing, target) and list(volume.shape) == size:
        return volume
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    resampled = sitk.Resample(
        image,
        [int(n) for n in size],
        sitk.Transform(),
        interpolator,
        image.GetOrigin(),
        [float(t) for t in target],
        image.GetDirection(),
        0,
        image.GetPixelID(),
    )
    return sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)


def volume_slices(volume: np.ndarray, axis: int) -> np.ndarray:
    """The 2D slices of a RAS volume along `axis` as a (K, H, W) stack."""
    return np.moveaxis(volume, axis, 0)
