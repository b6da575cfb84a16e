"""The raw-volume reader registry: which reader takes a path, reading it, and the content hash of its source.

Formats, tried in this order:

- NIfTI-1/2 files (.nii, .nii.gz) — `storage.readers.nifti`
- NRRD files (.nrrd, 3D Slicer .seg.nrrd) — `storage.readers.nrrd`
- DICOM series: a folder holding the slices of one series — `storage.readers.dicom`
- 2D images and label images (.png, .tif, .tiff) as (H, W, 1) volumes — `storage.readers.png`

Every reader returns a `Volume` in RAS orientation and raises `RawDataError` naming the path it was given. A new
format is one module with a `VolumeReader` subclass, registered in `READERS` below.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from storage.errors import RawDataError, unreachable
from storage.readers.base import Volume, VolumeReader
from storage.readers.dicom import DicomSeriesReader
from storage.readers.nifti import NiftiReader
from storage.readers.nrrd import NrrdReader
from storage.readers.png import PngReader

__all__ = ["READERS", "Volume", "VolumeReader", "read_volume", "reader_for", "source_sha256"]

READERS: list[VolumeReader] = [NiftiReader(), NrrdReader(), DicomSeriesReader(), PngReader()]


def reader_for(path: Path) -> VolumeReader:
    """The first registered reader that takes `path`; RawDataError when none does."""
    for reader in READERS:
        if reader.matches(Path(path)):
            return reader
    known = "; ".join(reader.name for reader in READERS)
    raise RawDataError(path, f"no reader for this file (known formats: {known})")


def read_volume(path: Path, dtype: type = np.float32) -> Volume:
    """Read a raw volume in any registered format as a RAS-oriented `Volume`; raise RawDataError naming the path."""
    path = Path(path)
    # Checked first so that a missing DICOM folder reads as missing rather than as an unknown format.
    if not path.exists():
        raise unreachable(path)
    return reader_for(path).read(path, dtype)


def source_sha256(path: Path) -> str:
    """Content hash of a source: a file's bytes, or a folder's files (each hashed) in sorted relative-path order.

    The hash is recorded in the store instead of any identifier; file names never enter it, only the order.
    """
    path = Path(path)
    if path.is_file():
        return _file_sha256(path)
    if not path.is_dir():
        raise unreachable(path)
    digest = hashlib.sha256()
    for file in sorted((f for f in path.rglob("*") if f.is_file()), key=lambda f: f.relative_to(path).as_posix()):
        # Hashing each file's digest rather than the concatenated bytes keeps file boundaries in the hash.
        digest.update(bytes.fromhex(_file_sha256(file)))
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
