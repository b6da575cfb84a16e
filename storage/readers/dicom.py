"""DICOM series (a folder holding the slices of exactly one series) through SimpleITK/GDCM, reoriented to RAS.

Slices are ordered by their position along the slice normal (`GetGDCMSeriesFileNames`), never by file name. A
series whose slices are not evenly spaced along that normal (a missing or duplicated slice, or variable spacing) is
refused: ITK would assume one spacing for the whole volume and misplace every slice after the gap. Only geometry
(spacing, origin, direction, as ITK derives them, and each slice's Image Position (Patient) (0020,0032)) and the
Modality tag (0008,0060) are taken from the headers: patient name, identifiers and dates are never copied out of
this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from storage.errors import RawDataError, unreachable
from storage.readers.base import Volume, VolumeReader
from storage.readers.itk import check_header, describe, to_volume

MODALITY_TAG = "0008|0060"
POSITION_TAG = "0020|0032"
# How far one gap between neighbouring slices may differ from the series' spacing (the median gap), as a share of
# it: positions are decimal strings, rounded by some scanners; a missing slice doubles a gap.
GAP_TOLERANCE = 0.05


class DicomSeriesReader(VolumeReader):
    name = "DICOM series (a folder)"

    def matches(self, path: Path) -> bool:
        return Path(path).is_dir()

    def read(self, path: Path, dtype: type = np.float32) -> Volume:
        path = Path(path)
        if not path.exists():
            raise unreachable(path)
        if not path.is_dir():
            raise RawDataError(path, "expected a folder holding one DICOM series")
        try:
            return _read(path, dtype)
        except RawDataError:
            raise
        except Exception as error:  # ITK reports every parse or decode failure as a RuntimeError
            raise RawDataError(path, f"not a readable DICOM series ({describe(error)})") from error


def _read(path: Path, dtype: type) -> Volume:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    if not series:
        raise RawDataError(path, "no DICOM series in this folder")
    if len(series) > 1:
        raise RawDataError(path, f"holds {len(series)} DICOM series; expected exactly one")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])
    first = sitk.ImageFileReader()
    first.SetImageIO("GDCMImageIO")
    first.SetFileName(files[0])
    first.ReadImageInformation()
    check_header(path, first, dtype, slices=len(files))
    modality = first.GetMetaData(MODALITY_TAG).strip() if first.HasMetaDataKey(MODALITY_TAG) else ""
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # each slice's header, for its position
    image = reader.Execute()
    if len(files) > 2:
        normal = np.asarray(image.GetDirection(), float).reshape(3, 3)[:, 2]
        check_slice_gaps(path, [_position(reader, index) for index in range(len(files))], normal)
    return to_volume(path, image, dtype, modality or None)


def _position(reader: sitk.ImageSeriesReader, index: int) -> np.ndarray | None:
    """Slice `index`'s Image Position (Patient) in mm, or None where its header has none."""
    if not reader.HasMetaDataKey(index, POSITION_TAG):
        return None
    try:
        return np.asarray([float(value) for value in reader.GetMetaData(index, POSITION_TAG).split("\\")], float)
    except ValueError:
        return None


def check_slice_gaps(path: Path, positions: Sequence[np.ndarray | None], normal: np.ndarray) -> None:
    """Refuse slices (in series order) whose distances along `normal` are not evenly spaced within GAP_TOLERANCE;
    a series where some slice states no position is left to ITK's own geometry."""
    if any(position is None or position.shape != (3,) for position in positions):
        return
    along = np.asarray([float(np.dot(position, normal)) for position in positions])
    gaps = np.diff(along)
    spacing = float(np.median(gaps))
    for index, gap in enumerate(gaps):
        if abs(gap - spacing) > GAP_TOLERANCE * abs(spacing):
            cause = "a missing slice?" if abs(gap) > abs(spacing) else "a duplicated slice?"
            raise RawDataError(
                path,
                f"slice spacing not uniform: gap of {gap:.4g} mm between positions {along[index]:.4g} and "
                f"{along[index + 1]:.4g} mm (slices {index + 1} and {index + 2} of {len(along)}) where the "
                f"series' spacing is {spacing:.4g} mm ({cause})",
            )
