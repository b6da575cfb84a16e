"""3D volumes sent to the endpoint (NIfTI, a zipped DICOM series) and the label volumes sent back (NIfTI, DICOM SEG).

Decoding is in memory and bounded: a gzip stream or zip entry may expand to at most `max_bytes` (a decompression
bomb is refused while it inflates, not after), zip entries with absolute paths or `..` components are refused
(nothing is ever extracted to disk), and every problem raises `InvalidInput` naming the upload. A DICOM series is
ordered by position along the slice normal, never by file name; the volume's axis 0 is the slice axis, axes 1–2
are the rows and columns of each frame. A NIfTI volume keeps its stored voxel order and affine. Label volumes go
back on the input's grid: NIfTI with the input's affine, or a DICOM SEG (highdicom) that references the source
instances. Nothing read here is logged; patient data in DICOM headers only travels back to the requester inside
the SEG, which must reference the patient and study to be usable.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from pydicom.uid import generate_uid

from promptseg.inference.errors import InvalidInput

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
MAX_VOLUME_BYTES = 1 << 30
MAX_VOXELS = 1024 * 1024 * 512
NIFTI_MAGIC = (b"n+1\x00", b"n+2\x00")
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


@dataclass
class Volume:
    """A 3D array in its stored order, with what is needed to write results on the same grid."""

    name: str
    array: np.ndarray
    kind: str  # "nifti" or "dicom"
    default_axis: int
    modality: str | None = None
    affine: np.ndarray | None = None
    header: nib.Nifti1Header | None = None
    datasets: list[pydicom.Dataset] = field(default_factory=list)

    def slices(self, axis: int) -> list[np.ndarray]:
        if axis not in (0, 1, 2):
            raise InvalidInput(self.name, f"axis must be 0, 1 or 2, got {axis}")
        return [np.take(self.array, index, axis=axis) for index in range(self.array.shape[axis])]


def _inflate(name: str, data: bytes, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31)
    try:
        raw = inflater.decompress(data, max_bytes + 1)
    except zlib.error as error:
        raise InvalidInput(name, f"corrupt gzip stream ({error})") from error
    if len(raw) > max_bytes:
        raise InvalidInput(name, f"decompresses beyond {max_bytes} bytes (refused as a decompression bomb)")
    if not inflater.eof:
        raise InvalidInput(name, "truncated gzip stream")
    return raw


def _check_array(name: str, array: np.ndarray) -> np.ndarray:
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InvalidInput(name, f"expected a 3D volume, got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise InvalidInput(name, f"unsupported voxel type {array.dtype}")
    array = np.asarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise InvalidInput(name, "contains NaN or infinite values")
    return array


def read_nifti(name: str, data: bytes, max_bytes: int = MAX_VOLUME_BYTES) -> Volume:
    raw = _inflate(name, data, max_bytes) if data.startswith(GZIP_MAGIC) else data
    try:
        image = nib.Nifti1Image.from_bytes(raw)
        shape = image.header.get_data_shape()
        if int(np.prod(shape)) > MAX_VOXELS:
            raise InvalidInput(name, f"volume of shape {shape} exceeds {MAX_VOXELS} voxels")
        array = np.asanyarray(image.dataobj)
    except InvalidInput:
        raise
    except Exception as error:
        raise InvalidInput(name, f"not a readable NIfTI volume (truncated or corrupt: {error})") from error
    return Volume(name, _check_array(name, array), "nifti", 2, affine=image.affine, header=image.header)


def _safe_entries(name: str, archive: zipfile.ZipFile, max_bytes: int) -> list[zipfile.ZipInfo]:
    entries, total = [], 0
    for info in archive.infolist():
        path = PurePosixPath(info.filename.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or ":" in info.filename:
            raise InvalidInput(name, f"zip entry {info.filename!r} escapes the archive (path traversal)")
        if info.is_dir() or path.name.startswith(".") or "__MACOSX" in path.parts:
            continue
        total += info.file_size
        if total > max_bytes:
            raise InvalidInput(name, f"zip expands beyond {max_bytes} bytes (refused as a decompression bomb)")
        entries.append(info)
    if not entries:
        raise InvalidInput(name, "the zip holds no files")
    return entries


def _read_entry(name: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> bytes:
    """An entry's bytes, never more than `budget` (a header may understate the real size)."""
    with archive.open(info) as handle:
        data = handle.read(budget + 1)
    if len(data) > budget:
        raise InvalidInput(name, "zip expands beyond the size limit (refused as a decompression bomb)")
    return data


def read_dicom_zip(name: str, data: bytes, max_bytes: int = MAX_VOLUME_BYTES) -> Volume:
    """One DICOM series from a zip of its instance files (a DICOMDIR is skipped)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        datasets, budget = [], max_bytes
        for info in _safe_entries(name, archive, max_bytes):
            raw = _read_entry(name, archive, info, budget)
            budget -= len(raw)
            try:
                dataset = pydicom.dcmread(io.BytesIO(raw))
            except Exception as error:
                raise InvalidInput(name, f"zip entry {info.filename!r} is not a DICOM file ({error})") from error
            if dataset.get("SOPClassUID") != DICOMDIR_CLASS:
                datasets.append(dataset)
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise InvalidInput(name, f"not a readable zip (truncated or corrupt: {error})") from error
    return _series_volume(name, datasets)


def _series_volume(name: str, datasets: list[pydicom.Dataset]) -> Volume:
    series = {str(d.get("SeriesInstanceUID", "")) for d in datasets}
    if len(series) != 1:
        raise InvalidInput(name, f"expected exactly one DICOM series, found {len(series)}")
    try:
        orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        datasets = sorted(datasets, key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
        frames = [
            d.pixel_array.astype(np.float32) * float(d.get("RescaleSlope", 1)) + float(d.get("RescaleIntercept", 0))
            for d in datasets
        ]
    except Exception as error:
        raise InvalidInput(name, f"DICOM instances without readable geometry or pixels ({error})") from error
    if len({frame.shape for frame in frames}) != 1:
        raise InvalidInput(name, "the series' frames differ in size")
    modality = str(datasets[0].get("Modality", "")) or None
    return Volume(name, _check_array(name, np.stack(frames)), "dicom", 0, modality=modality, datasets=datasets)


def read_volume(name: str, data: bytes, max_bytes: int = MAX_VOLUME_BYTES) -> Volume:
    if data.startswith(ZIP_MAGIC):
        return read_dicom_zip(name, data, max_bytes)
    if data.startswith(GZIP_MAGIC) or data[344:348] in NIFTI_MAGIC:
        return read_nifti(name, data, max_bytes)
    raise InvalidInput(name, "not a NIfTI volume (.nii, .nii.gz) or a zipped DICOM series")


def label_volume(slices: list[np.ndarray], axis: int) -> np.ndarray:
    """Per-slice label maps stacked back along `axis` (uint8, or uint16 for label values above 255)."""
    volume = np.stack(slices, axis=axis)
    return volume.astype(np.uint8 if volume.max(initial=0) <= 255 else np.uint16)


def nifti_bytes(labels: np.ndarray, source: Volume) -> bytes:
    """A gzipped NIfTI label volume on the source's grid (its affine and spatial header)."""
    header = source.header.copy() if source.header is not None else None
    image = nib.Nifti1Image(labels, source.affine, header)
    image.set_data_dtype(labels.dtype)
    image.header.set_slope_inter(1, 0)
    return zlib.compress(image.to_bytes(), 6, wbits=31)


def dicom_seg_bytes(labels: np.ndarray, source: Volume, label_values: list[int], model: str, version: str) -> bytes:
    """A DICOM SEG (binary, one segment per label value) over the source series' instances, frame for frame."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model, version=version, family=hd.sr.CodedConcept("123109", "DCM", "Manual Processing")
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"label {value}",
            segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
            segmented_property_type=hd.sr.CodedConcept("85756007", "SCT", "Tissue"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, value in enumerate(label_values, start=1)
    ]
    masks = np.stack([labels == value for value in label_values], axis=-1).astype(np.uint8)
    segmentation = hd.seg.Segmentation(
        source_images=source.datasets,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=9001,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="PromptSeg platform",
        manufacturer_model_name=model,
        software_versions=version,
        device_serial_number="0",
        omit_empty_frames=False,
    )
    buffer = io.BytesIO()
    segmentation.save_as(buffer)
    return buffer.getvalue()


def read_label_volume(data: bytes, volume_format: str, source: Volume) -> np.ndarray:
    """A returned label volume back as an array on the source's grid (label values; 0 = background)."""
    if volume_format == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if volume_format == "nifti":
        return np.asanyarray(nib.Nifti1Image.from_bytes(zlib.decompress(data, wbits=31)).dataobj)
    segmentation = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(data)))
    numbers = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in source.datasets], combine_segments=True
    )
    values = {
        int(s.SegmentNumber): int(str(s.SegmentLabel).removeprefix("label ")) for s in segmentation.SegmentSequence
    }
    lookup = np.array([0, *(values[n] for n in range(1, len(values) + 1))])
    return lookup[numbers]
