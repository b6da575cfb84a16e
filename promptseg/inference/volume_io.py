"""3D volumes sent to the endpoint (NIfTI, a zipped DICOM series) and the label volumes sent back (NIfTI, DICOM SEG).

An upload is read by the ingest readers (storage.readers: nibabel for NIfTI, SimpleITK/GDCM for DICOM, so every
transfer syntax ingest decodes, JPEG Lossless included), reoriented to RAS by their one rule; the scan then goes
through the same preparation as training data (storage.preparation). Decoding is bounded by the request's `Budget`
(promptseg.inference.budget): a NIfTI's declared size is charged from its header before its voxels inflate, and a
gzip stream inflates in bounded chunks up to that size only (a decompression bomb never inflates past it); a DICOM
series' rows, columns and frames are charged from its instances' headers before any pixel is decoded; zip entries
with absolute paths or `..` components are refused, and every problem raises `InvalidInput` naming the upload. The
readers take files, so the upload is written to a private temporary folder under names of our own (never the
archive's) and removed as soon as it is read. A DICOM series is ordered by position along the slice normal, never
by file name. Label volumes go back on the input's grid and voxel order: NIfTI with the input's affine, or a DICOM
SEG (highdicom) that references the source instances, its segments named by the task's structure names and coded
as an AI algorithm's output. Nothing read here is logged; patient data in DICOM headers only travels back to the
requester inside the SEG, which must reference the patient and study to be usable.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from promptseg.inference.budget import Budget
from promptseg.inference.errors import InvalidInput
from storage.errors import RawDataError
from storage.readers import read_volume as read_scan
from storage.readers.base import Volume as Scan

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
INFLATE_CHUNK = 1 << 20
SEG_SOURCE_ATTRIBUTES = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "FrameOfReferenceUID",
)
NIFTI2_HEADER_BYTES = 540
NIFTI_MAGIC = (b"n+1\x00", b"n+2\x00")
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


@dataclass
class Volume:
    """An uploaded scan: `scan` in RAS voxel order with its spacing (what preparation takes), and what is needed
    to write results back on the file's own grid (a NIfTI header and affine, or the DICOM instances in order)."""

    name: str
    scan: Scan
    kind: str  # "nifti" or "dicom"
    header: nib.Nifti1Header | None = None
    affine: np.ndarray | None = None
    datasets: list[pydicom.Dataset] = field(default_factory=list)

    @property
    def modality(self) -> str | None:
        return self.scan.modality

    @property
    def default_axis(self) -> int:
        """The RAS axis the file's slices lie along (its third voxel axis: a DICOM series' instance axis)."""
        return self.scan.stored_axis(2)

    @property
    def array(self) -> np.ndarray:
        """The voxels in the file's own order."""
        return self.scan.in_stored_order(self.scan.array)


def _read_file(name: str, path: Path) -> Scan:
    try:
        return read_scan(path)
    except RawDataError as error:
        raise InvalidInput(name, error.problem) from error


def _inflate_prefix(name: str, data: bytes, size: int) -> bytes:
    """At most the first `size` bytes a gzip stream inflates to, inflated in bounded chunks (a decompression bomb
    never inflates past `size`)."""
    inflater, out, pending = zlib.decompressobj(wbits=31), bytearray(), data
    try:
        while len(out) < size and not inflater.eof:
            chunk = inflater.decompress(pending, min(INFLATE_CHUNK, size - len(out)))
            pending = inflater.unconsumed_tail
            if not chunk and not pending:
                raise InvalidInput(name, "truncated gzip stream")
            out += chunk
    except zlib.error as error:
        raise InvalidInput(name, f"corrupt gzip stream ({error})") from error
    return bytes(out)


def _nifti_header(name: str, head: bytes) -> nib.Nifti1Header:
    """The NIfTI-1 or NIfTI-2 header at the start of `head`."""
    kind = nib.Nifti2Header if head[4:8] in NIFTI_MAGIC else nib.Nifti1Header
    try:
        return kind(head[: kind.sizeof_hdr])  # the fixed header only: extensions are read with the file
    except Exception as error:
        raise InvalidInput(name, f"not a readable NIfTI header ({error})") from error


def read_nifti(name: str, data: bytes, budget: Budget | None = None) -> Volume:
    """A NIfTI volume (gzipped or not). Its header's declared size is charged to `budget` before the voxel data
    is inflated, and the file must hold that much data (a header-only file is refused, not allocated)."""
    budget = budget or Budget()
    packed = data.startswith(GZIP_MAGIC)
    header = _nifti_header(name, _inflate_prefix(name, data, NIFTI2_HEADER_BYTES) if packed else data)
    shape, itemsize = header.get_data_shape(), header.get_data_dtype().itemsize
    if not shape or 0 in shape:
        raise InvalidInput(name, f"the volume is empty (shape {shape})")
    budget.charge_volume(name, shape, itemsize)
    offset, voxel_bytes = int(header.get_data_offset()), int(np.prod(shape)) * itemsize
    raw = _inflate_prefix(name, data, offset + voxel_bytes) if packed else data[: offset + voxel_bytes]
    if len(raw) < offset + voxel_bytes:
        raise InvalidInput(
            name, f"holds {max(len(raw) - offset, 0)} bytes of voxels where its header declares {voxel_bytes}"
        )
    with tempfile.TemporaryDirectory(prefix="promptseg-upload-") as folder:
        path = Path(folder) / "volume.nii"
        path.write_bytes(raw)
        del raw
        scan = _read_file(name, path)
        image = nib.load(str(path))
        header, affine = image.header.copy(), image.affine
    return Volume(name, scan, "nifti", header=header, affine=affine)


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


def read_dicom_zip(name: str, data: bytes, budget: Budget | None = None, for_seg: bool = False) -> Volume:
    """One DICOM series from a zip of its instance files (a DICOMDIR is skipped), read by the ingest reader once
    the instances' rows, columns and frames are charged to `budget` (and, `for_seg`, once every instance holds what
    a DICOM SEG must reference)."""
    budget = budget or Budget()
    with tempfile.TemporaryDirectory(prefix="promptseg-upload-") as folder:
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            left = budget.remaining_bytes()
            for number, info in enumerate(_safe_entries(name, archive, left)):
                raw = _read_entry(name, archive, info, left)
                left -= len(raw)
                (Path(folder) / f"{number:06d}.dcm").write_bytes(raw)
        except (zipfile.BadZipFile, EOFError, zlib.error) as error:
            raise InvalidInput(name, f"not a readable zip (truncated or corrupt: {error})") from error
        headers = _instance_headers(Path(folder))
        _charge_instances(name, headers, budget)
        if for_seg:
            _check_seg_source(name, headers)
        scan = _read_file(name, Path(folder))
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series[0])
        datasets = [pydicom.dcmread(file, stop_before_pixels=True) for file in files]
    return Volume(name, scan, "dicom", datasets=datasets)


def _instance_headers(folder: Path) -> list[pydicom.Dataset]:
    """The headers of the DICOM files in `folder` (a DICOMDIR is deleted; a file that is not DICOM is left for the
    reader to name)."""
    headers = []
    for path in sorted(folder.iterdir()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if header.get("SOPClassUID") == DICOMDIR_CLASS:
            path.unlink()
        else:
            headers.append(header)
    return headers


def _check_seg_source(name: str, headers: list[pydicom.Dataset]) -> None:
    """Refuse a series a DICOM SEG cannot reference (an instance lacking an attribute the SEG must point to)."""
    for index, header in enumerate(headers):
        missing = [keyword for keyword in SEG_SOURCE_ATTRIBUTES if not header.get(keyword)]
        if missing:
            raise InvalidInput(
                name,
                f"instance {index} lacks {', '.join(missing)}, which a DICOM SEG must reference: ask for "
                "volume_format=npy",
            )


def _charge_instances(name: str, headers: list[pydicom.Dataset], budget: Budget) -> None:
    """Charge the instances' declared pixels (rows × columns × frames) to `budget`."""
    rows = columns = frames = itemsize = 0
    for header in headers:
        rows, columns = max(rows, int(header.get("Rows", 0))), max(columns, int(header.get("Columns", 0)))
        frames += int(header.get("NumberOfFrames", 1) or 1)
        itemsize = max(itemsize, int(header.get("BitsAllocated", 16)) // 8)
    budget.charge_volume(name, (columns, rows, frames), max(itemsize, 1))


def volume_kind(name: str, data: bytes) -> str:
    """ "dicom" (a zip) or "nifti", from the upload's first bytes."""
    if data.startswith(ZIP_MAGIC):
        return "dicom"
    if data.startswith(GZIP_MAGIC) or data[344:348] in NIFTI_MAGIC or data[4:8] in NIFTI_MAGIC:
        return "nifti"
    raise InvalidInput(name, "not a NIfTI volume (.nii, .nii.gz) or a zipped DICOM series")


def read_volume(name: str, data: bytes, budget: Budget | None = None, for_seg: bool = False) -> Volume:
    """A NIfTI volume or a zipped DICOM series, charged to `budget` (a default one when none is given); `for_seg`:
    a series is refused before its pixels are decoded when a DICOM SEG could not reference it."""
    if volume_kind(name, data) == "dicom":
        return read_dicom_zip(name, data, budget, for_seg)
    return read_nifti(name, data, budget)


def nifti_bytes(labels: np.ndarray, source: Volume) -> bytes:
    """A gzipped NIfTI label volume (in the file's voxel order) on the source's grid (its affine and header)."""
    header = source.header.copy() if source.header is not None else None
    image = nib.Nifti1Image(labels, source.affine, header)
    image.set_data_dtype(labels.dtype)
    image.header.set_slope_inter(1, 0)
    return zlib.compress(image.to_bytes(), 6, wbits=31)


ALGORITHM_FAMILY = hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence")
ANATOMY = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")
ALTERED = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure")
TISSUE = hd.sr.CodedConcept("85756007", "SCT", "Tissue")
LESION_WORDS = ("tumor", "tumour", "lesion", "cancer", "metast", "nodule", "mass")


def property_codes(structure: str) -> tuple[hd.sr.CodedConcept, hd.sr.CodedConcept]:
    """The SNOMED category and type of a structure name where pydicom's SNOMED dictionary knows it (`left kidney`
    → Kidney is not guessed: the whole name must match), else Tissue; lesion-like names are altered structures."""
    category = ALTERED if any(word in structure.lower() for word in LESION_WORDS) else ANATOMY
    keyword = "".join(part.capitalize() for part in structure.replace("_", " ").replace("-", " ").split())
    try:
        code = getattr(codes.SCT, keyword)
    except AttributeError:
        return category, TISSUE
    return category, hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)


def dicom_seg_bytes(labels: np.ndarray, source: Volume, names: dict[int, str], model: str, version: str) -> bytes:
    """A DICOM SEG (binary, one segment per label value of `names`, labelled with its structure name) over the
    source series' instances, frame for frame; `labels` is in the file's voxel order (column, row, instance)."""
    algorithm = hd.AlgorithmIdentificationSequence(name=model, version=version, family=ALGORITHM_FAMILY)
    descriptions = []
    for number, (value, structure) in enumerate(names.items(), start=1):
        category, property_type = property_codes(structure)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=structure,
                segmented_property_category=category,
                segmented_property_type=property_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_id=f"label value {value}",
                tracking_uid=generate_uid(),
            )
        )
    frames = labels.transpose(2, 1, 0)
    masks = np.stack([frames == value for value in names], axis=-1).astype(np.uint8)
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
    """A returned label volume back as an array in the source file's voxel order (label values; 0 = background)."""
    if volume_format == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if volume_format == "nifti":
        return np.asanyarray(nib.Nifti1Image.from_bytes(zlib.decompress(data, wbits=31)).dataobj)
    return _seg_labels(data, source)


def _seg_labels(data: bytes, source: Volume) -> np.ndarray:
    """A DICOM SEG over `source`'s instances as a label map in the file's voxel order: each segment's label value
    from its tracking id when this platform wrote it, else its segment number."""
    segmentation = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(data)))
    numbers = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in source.datasets], combine_segments=True
    )
    values = {}
    for segment in segmentation.SegmentSequence:
        tracking = str(segment.get("TrackingID", ""))
        number = int(segment.SegmentNumber)
        values[number] = int(tracking.removeprefix("label value ")) if tracking.startswith("label value ") else number
    lookup = np.zeros(max(values, default=0) + 1, dtype=np.int64)
    for number, value in values.items():
        lookup[number] = value
    return lookup[numbers].transpose(2, 1, 0)


def read_label_upload(name: str, data: bytes, source: Volume, budget: Budget | None = None) -> np.ndarray:
    """An uploaded label volume on `source`'s grid as integer labels in RAS order: NIfTI, a zipped DICOM series, or
    a DICOM SEG referencing `source`'s instances."""
    if data[128:132] == b"DICM":
        if source.kind != "dicom":
            raise InvalidInput(name, "a DICOM SEG label volume needs a DICOM series as its scan")
        (budget or Budget()).charge_volume(name, source.scan.array.shape, 1)
        try:
            return source.scan.in_ras_order(_seg_labels(data, source))
        except Exception as error:
            raise InvalidInput(name, f"not a DICOM SEG of the scan's series ({error})") from error
    labels = read_volume(name, data, budget).scan.array
    if labels.shape != source.scan.array.shape:
        raise InvalidInput(
            name, f"label volume of shape {labels.shape} is not on the scan's grid {source.scan.array.shape}"
        )
    return np.rint(labels).astype(np.int32)
