"""NIfTI-1/2 volumes (.nii, .nii.gz) through nibabel, reoriented to RAS by the readers' one rule (`canonical`)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from storage.errors import RawDataError
from storage.readers.base import Volume, VolumeReader, canonical, check_size, check_spacing


class NiftiReader(VolumeReader):
    name = "NIfTI (.nii, .nii.gz)"

    def matches(self, path: Path) -> bool:
        return Path(path).name.lower().endswith((".nii", ".nii.gz"))

    def read(self, path: Path, dtype: type = np.float32) -> Volume:
        try:
            return _read(Path(path), dtype)
        except RawDataError:
            raise
        except FileNotFoundError as error:
            raise RawDataError(path, "file not found") from error
        except Exception as error:  # nibabel raises many types for truncated or foreign files
            raise RawDataError(path, f"not a readable NIfTI volume ({error})") from error


def _read(path: Path, dtype: type) -> Volume:
    image = nib.load(str(path))  # reads the header only; the data stays on disk until asked for
    if len(image.shape) != 3:
        raise RawDataError(path, f"expected a 3D volume, got shape {image.shape}")
    check_size(path, image.shape, max(image.get_data_dtype().itemsize, np.dtype(dtype).itemsize))
    # nibabel silently replaces zero or negative pixdims when it loads a header, so they are judged on the raw one.
    with ImageOpener(str(path)) as handle:
        raw_zooms = type(image.header).from_fileobj(handle, check=False)["pixdim"][1:4]
    check_spacing(path, raw_zooms)
    return canonical(path, np.asanyarray(image.dataobj), image.affine, dtype)
