"""NRRD volumes (.nrrd, and 3D Slicer label maps .seg.nrrd) through SimpleITK, reoriented from LPS to RAS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from storage.errors import RawDataError
from storage.readers.base import Volume, VolumeReader
from storage.readers.itk import check_header, describe, to_volume


class NrrdReader(VolumeReader):
    name = "NRRD (.nrrd, .seg.nrrd)"

    def matches(self, path: Path) -> bool:
        return Path(path).name.lower().endswith(".nrrd")

    def read(self, path: Path, dtype: type = np.float32) -> Volume:
        path = Path(path)
        if not path.is_file():
            raise RawDataError(path, "file not found")
        try:
            reader = sitk.ImageFileReader()
            reader.SetImageIO("NrrdImageIO")
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            check_header(path, reader, dtype)
            return to_volume(path, reader.Execute(), dtype)
        except RawDataError:
            raise
        except Exception as error:  # ITK reports every parse or decode failure as a RuntimeError
            raise RawDataError(path, f"not a readable NRRD volume ({describe(error)})") from error
