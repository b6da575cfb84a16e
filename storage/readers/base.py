"""What every raw-volume reader returns and must check: the `Volume`, the `VolumeReader` interface, shared guards.

A `Volume` holds pixel data in RAS orientation (nibabel's `as_closest_canonical` convention: array indices increase
toward Right, Anterior, Superior along axes 0, 1, 2), the voxel spacing in millimetres, where the format records it
the modality, and the axis permutation and flips that took the stored voxel order to RAS (`to_ras`, nibabel's
orientation array), so that a result computed on the RAS array goes back onto the file's own grid
(`Volume.in_stored_order`). Every reader reaches RAS through `canonical` here, the one reorientation rule.
Nothing else leaves a reader: header fields that can carry patient data are never copied.
The guards here are shared so that every format refuses the same things with the same `RawDataError` messages.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from storage.errors import RawDataError

# Beyond these a header is corrupt or hostile (no scan of a body is this large); refusing it from the header keeps
# a forged file from exhausting memory before any data is read.
MAX_VOXELS = 2**31
MAX_DECODED_BYTES = 8 * 2**30
# How far a value read as a whole number (a label) may lie from one: float storage and scaling leave 1.0000001.
WHOLE_NUMBER_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Volume:
    """A 3D array in RAS orientation with its voxel spacing in millimetres and the modality the file states."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    modality: str | None = None
    affine: np.ndarray | None = None  # voxel index (RAS array order) → RAS world millimetres, 4×4
    to_ras: np.ndarray | None = None  # stored voxel order → RAS array order (nibabel orientation array); None: same

    def in_stored_order(self, array: np.ndarray) -> np.ndarray:
        """An array on this volume's RAS grid put back in the voxel order the file stores."""
        if self.to_ras is None:
            return array
        return nib.orientations.apply_orientation(array, nib.orientations.ornt_transform(_RAS, self.to_ras))

    def in_ras_order(self, stored: np.ndarray) -> np.ndarray:
        """An array in the file's voxel order (e.g. a label volume on the same grid) put in this volume's RAS order."""
        return stored if self.to_ras is None else nib.orientations.apply_orientation(stored, self.to_ras)

    def stored_axis(self, stored: int) -> int:
        """The RAS axis that the file's axis `stored` became."""
        return stored if self.to_ras is None else int(self.to_ras[stored, 0])


_RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


class VolumeReader(ABC):
    """One raw format: recognizes its paths and reads them as a checked `Volume`."""

    name: str

    @abstractmethod
    def matches(self, path: Path) -> bool:
        """Whether `path` (a file or folder) is in this reader's format, judged without reading its data."""

    @abstractmethod
    def read(self, path: Path, dtype: type = np.float32) -> Volume:
        """Read `path` as a RAS-oriented `Volume` of `dtype`; raise RawDataError naming `path` on any failure."""


def check_size(path: Path, shape: Sequence[int], itemsize: int) -> None:
    """Refuse a header whose shape promises an absurd amount of data (called before any data is decoded)."""
    voxels = math.prod(int(n) for n in shape)
    if voxels > MAX_VOXELS or voxels * itemsize > MAX_DECODED_BYTES:
        raise RawDataError(
            path, f"header promises an absurd size {tuple(shape)} ({voxels} voxels, {voxels * itemsize} bytes)"
        )


def check_spacing(path: Path, spacing: Sequence[float]) -> tuple[float, float, float]:
    """The spacing as three floats; refuse zero, negative or non-finite values."""
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(s) and s > 0 for s in values):
        raise RawDataError(path, f"voxel spacing {values} must be three positive numbers")
    return values  # type: ignore[return-value]


def checked_volume(
    path: Path,
    array: np.ndarray,
    spacing: Sequence[float],
    dtype: type,
    modality: str | None = None,
    affine: np.ndarray | None = None,
    to_ras: np.ndarray | None = None,
) -> Volume:
    """Apply the shared guards to decoded data (still in its stored dtype) and cast it to `dtype`."""
    if array.ndim != 3:
        raise RawDataError(path, f"expected a 3D volume, got shape {array.shape}")
    # Checked before the cast: NaN cast to an integer type silently becomes an arbitrary number.
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        raise RawDataError(path, "contains NaN or infinite values")
    if array.dtype.kind in "fc" and np.dtype(dtype).kind in "iu":
        array = whole_numbers(path, array)
    return Volume(
        array=array.astype(dtype, copy=False),
        spacing=check_spacing(path, spacing),
        modality=modality,
        affine=affine,
        to_ras=to_ras,
    )


def whole_numbers(path: Path, array: np.ndarray) -> np.ndarray:
    """Float voxels read as whole numbers (label values): rounded where within WHOLE_NUMBER_TOLERANCE of one,
    refused otherwise (a cast would truncate 1.5 to 1 and 0.5 to background)."""
    rounded = np.rint(array)
    fractional = np.abs(array - rounded) > WHOLE_NUMBER_TOLERANCE
    if fractional.any():
        examples = ", ".join(f"{value:g}" for value in np.unique(array[fractional])[:5])
        raise RawDataError(
            path, f"fractional values ({examples}) where whole label values are expected; they are not truncated"
        )
    return rounded


def canonical(path: Path, stored: np.ndarray, affine: np.ndarray, dtype: type, modality: str | None = None) -> Volume:
    """A volume from its stored voxels and their index → RAS-millimetre affine, reoriented to the closest RAS
    voxel order (a permutation and flips, never an interpolation; what `nib.as_closest_canonical` does)."""
    to_ras = nib.orientations.io_orientation(affine)
    array = nib.orientations.apply_orientation(stored, to_ras)
    ras_affine = affine @ nib.orientations.inv_ornt_aff(to_ras, stored.shape)
    spacing = np.sqrt((ras_affine[:3, :3] ** 2).sum(axis=0))
    return checked_volume(path, array, spacing, dtype, modality, ras_affine, to_ras)
