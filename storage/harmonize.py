"""The harmonization recipe: raw pixels → model input in [0, 1] at the store's resolution, and back.

One recipe serves preprocessing, training, evaluation and serving, so a model never sees pixels prepared
differently from the ones it was trained on.

- Intensities (modality-aware): CT is clipped to the dataset's foreground 0.5/99.5 percentiles (from the
  fingerprint) or a configured window; MR and other modalities to each image's own 0.5/99.5 percentiles of
  non-zero pixels; 8-bit images are divided by 255. Then, unlike nnU-Net's z-score and as UniverSeg's data does,
  the clipped range is scaled to [0, 1]: in-context models compare prompt and query pixels directly, and a fixed
  range keeps images from different centers and modalities on one scale.
- Geometry: a 2D slice is zero-padded to a square (centered) and resized to `resolution`×`resolution`
  (bilinear with antialiasing for images, nearest for label maps). `SliceGeometry` records the padding so a
  predicted mask is mapped back to the slice's native grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
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


def normalization_from_fingerprint(modality: str, fingerprint: dict) -> NormalizationParams:
    """The recipe for a dataset from its fingerprint (storage.fingerprint)."""
    foreground = fingerprint["foreground_intensity"]
    return normalization_for(modality, (foreground["percentile_00_5"], foreground["percentile_99_5"]))


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
    """Native size of a 2D slice and the padding that made it square."""

    height: int
    width: int
    pad_top: int
    pad_left: int

    @property
    def side(self) -> int:
        return max(self.height, self.width)


def _resize(array: torch.Tensor, size: int, label: bool) -> torch.Tensor:
    if label:
        return F.interpolate(array, size=(size, size), mode="nearest-exact")
    return F.interpolate(array, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def to_model_grid(slices: np.ndarray, resolution: int, *, label: bool = False) -> tuple[np.ndarray, SliceGeometry]:
    """Pad a stack of 2D slices (K, H, W) to square and resize to resolution; return the stack and its geometry."""
    _, height, width = slices.shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    padded = np.zeros((slices.shape[0], side, side), dtype=np.float32)
    padded[:, top : top + height, left : left + width] = slices
    resized = _resize(torch.from_numpy(padded)[:, None], resolution, label)[:, 0].numpy()
    return resized, SliceGeometry(height, width, top, left)


def from_model_grid(slices: np.ndarray, geometry: SliceGeometry, *, label: bool = False) -> np.ndarray:
    """Invert `to_model_grid`: resize (K, R, R) back to the square side and crop the padding away."""
    square = _resize(torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None], geometry.side, label)
    top, left = geometry.pad_top, geometry.pad_left
    return square[:, 0, top : top + geometry.height, left : left + geometry.width].numpy()


def volume_slices(volume: np.ndarray, axis: int) -> np.ndarray:
    """The 2D slices of a RAS volume along `axis` as a (K, H, W) stack."""
    return np.moveaxis(volume, axis, 0)
