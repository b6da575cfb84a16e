"""Shared SimpleITK steps of the readers whose library is ITK (NRRD, DICOM): header guards and the LPS→RAS array.

ITK images live in LPS physical space and `GetArrayFromImage` returns (z, y, x). The (x, y, z) array and its
index → RAS affine go through the readers' one reorientation rule (`canonical`), which permutes and flips the grid
so that indices increase toward Right, Anterior, Superior.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from storage.errors import RawDataError
from storage.readers.base import Volume, canonical, check_size, check_spacing

_ITEMSIZE = {
    sitk.sitkUInt8: 1,
    sitk.sitkInt8: 1,
    sitk.sitkUInt16: 2,
    sitk.sitkInt16: 2,
    sitk.sitkUInt32: 4,
    sitk.sitkInt32: 4,
    sitk.sitkFloat32: 4,
}


def check_header(path: Path, info: sitk.ImageFileReader, dtype: type, slices: int = 1) -> None:
    """Guards judged from `ReadImageInformation()` alone; `slices` multiplies the depth (files of a series)."""
    if info.GetNumberOfComponents() != 1:
        raise RawDataError(path, f"expected a scalar volume, got {info.GetNumberOfComponents()} components per voxel")
    size = list(info.GetSize())
    size[-1] *= slices
    # Unlisted pixel types (64-bit, complex) are counted at 8 bytes, the widest a scalar voxel takes.
    check_size(path, size, max(_ITEMSIZE.get(info.GetPixelID(), 8), np.dtype(dtype).itemsize))
    if len(size) != 3:
        raise RawDataError(path, f"expected a 3D volume, got shape {tuple(size)}")
    check_spacing(path, info.GetSpacing())


def describe(error: Exception) -> str:
    """An ITK exception as one short line: its text spans several lines and starts with build paths."""
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def to_volume(path: Path, image: sitk.Image, dtype: type, modality: str | None = None) -> Volume:
    """The image's voxels in RAS order with its spacing, through the shared guards."""
    if image.GetDimension() != 3:
        raise RawDataError(path, f"expected a 3D volume, got shape {image.GetSize()}")
    return canonical(path, sitk.GetArrayFromImage(image).transpose(2, 1, 0), _ras_affine(image), dtype, modality)


def _ras_affine(image: sitk.Image) -> np.ndarray:
    """The index → world matrix in RAS millimetres (ITK's physical space is LPS: x and y flip sign)."""
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = lps_to_ras @ np.asarray(image.GetOrigin(), float)
    return affine
