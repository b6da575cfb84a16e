"""Reading raw volumes: NIfTI through nibabel, reoriented to RAS, with the content hash of each source file.

Only pixel data and geometry leave this module: header fields that can carry patient data are never read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from storage.errors import RawDataError


@dataclass(frozen=True)
class Volume:
    """A 3D array in RAS orientation with its voxel spacing in millimetres."""

    array: np.ndarray
    spacing: tuple[float, float, float]


def read_volume(path: Path, *, dtype: type = np.float32) -> Volume:
    """Read a NIfTI file as a RAS-oriented array; raise RawDataError naming the file on any failure."""
    try:
        image = nib.as_closest_canonical(nib.load(str(path)))
        array = np.asarray(image.dataobj, dtype=dtype)
    except FileNotFoundError as error:
        raise RawDataError(path, "file not found") from error
    except Exception as error:  # nibabel raises many types for truncated or foreign files
        raise RawDataError(path, f"not a readable NIfTI volume ({error})") from error
    if array.ndim != 3:
        raise RawDataError(path, f"expected a 3D volume, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise RawDataError(path, "contains NaN or infinite values")
    spacing = tuple(float(s) for s in image.header.get_zooms()[:3])
    return Volume(array=array, spacing=spacing)  # type: ignore[arg-type]


def file_sha256(path: Path) -> str:
    """Content hash of one source file (recorded in the store instead of any identifier)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
