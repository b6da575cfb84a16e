"""DICOM series (a folder holding the slices of exactly one series) through SimpleITK/GDCM, reoriented to RAS.

Slices are ordered by their position along the slice normal (`GetGDCMSeriesFileNames`), never by file name. Only
geometry (spacing, origin, direction, as ITK derives them) and the Modality tag (0008,0060) are taken from the
headers: patient name, identifiers and dates are never copied out of this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from storage.errors import RawDataError
from storage.readers.base import Volume, VolumeReader
from storage.readers.itk import check_header, describe, to_volume

MODALITY_TAG = "0008|0060"


class DicomSeriesReader(VolumeReader):
    name = "DICOM series (a folder)"

    def matches(self, path: Path) -> bool:
        return Path(path).is_dir()

    def read(self, path: Path, dtype: type = np.float32) -> Volume:
        path = Path(path)
        if not path.exists():
            raise RawDataError(path, "file not found")
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
    return to_volume(path, reader.Execute(), dtype, modality or None)
