"""How each simulated center writes its cases to disk, as that hospital's export tools would.

`center-a` writes the nnU-Net v2 / MSD raw layout: `dataset.json` (nnU-Net v2 keys and a `center` key),
`imagesTr/<case>_0000.nii.gz` and `labelsTr/<case>.nii.gz`, NIfTI with a diagonal (RAS) affine.

`center-b` writes NRRD: `imagesTr/<case>.nrrd` (float32) and `labelsTr/<case>.seg.nrrd` (uint8 label map with
Slicer-style segment names), gzip-encoded, described by `manifest.yaml` (the schema `storage.raw_dataset` reads:
dataset, center, modality, labels value → name, cases with paths relative to the manifest). Its voxel axes are
stored slice axis first (S, P, L), as a converter writing a C-ordered (z, y, x) array in LPS space produces.

`center-c` writes each image as a DICOM series: `imagesTr/<case>/IM<n>.dcm`, one int16 MR Image Storage file per
slice with ImagePositionPatient, ImageOrientationPatient (feet-first supine: rows towards the patient's right,
columns posterior, slices stacked inferiorly), PixelSpacing, SliceThickness, SpacingBetweenSlices and
InstanceNumber in geometric order, but file names numbered by a seeded shuffle, so only the geometry orders them.
UIDs derive from the seed; StudyDate and StudyTime stay empty (GDCM would stamp the time of writing), and so do
PatientName and PatientID unless asked for. The label is `labelsTr/<case>.seg.nrrd` on the series' grid, and
`manifest.yaml` lists the series folders.

Optionally (`png=True`) each center also gets a 2D variant: one axial slice per case, the one showing the most
structures, as an 8-bit image PNG (windowed to the slice's 0.5–99.5 percentiles, radiological display: anterior
up, the patient's right on the left) and a label PNG of the same values, described by `manifest.yaml`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import yaml

from storage.synthetic.anatomy import CENTERS, LABELS, Center

SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}  # CT / MR Image Storage
# Cases are synthesized in RAS voxel order; in SimpleITK's LPS world that is this direction matrix.
_RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def _oriented(array: np.ndarray, spacing: tuple[float, float, float], orientation: str) -> sitk.Image:
    """A RAS-ordered array as a SimpleITK image stored in `orientation`, centred on the scanner's isocentre."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(spacing)
    image.SetDirection(_RAS_DIRECTION)
    centre = [(n - 1) / 2 * s for n, s in zip(array.shape, spacing, strict=True)]
    image.SetOrigin(tuple(-float(c) for c in np.reshape(_RAS_DIRECTION, (3, 3)) @ centre))
    return sitk.DICOMOrient(image, orientation)


def _uid(*parts: object) -> str:
    """A DICOM UID (the 2.25 root takes a UUID as one decimal number) derived from `parts`: same seed, same UIDs."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'promptseg-synthetic:' + '/'.join(map(str, parts))).int}"


def _segment_metadata(label: sitk.Image) -> None:
    """Slicer .seg.nrrd segment names, so the label names travel with the file."""
    for index, (name, value) in enumerate(LABELS.items()):
        label.SetMetaData(f"Segment{index}_ID", name)
        label.SetMetaData(f"Segment{index}_Name", name)
        label.SetMetaData(f"Segment{index}_LabelValue", str(value))
        label.SetMetaData(f"Segment{index}_Layer", "0")


def _write_seg_nrrd(label: np.ndarray, center: Center, path: Path) -> None:
    image = _oriented(label, center.spacing, center.orientation)
    _segment_metadata(image)
    sitk.WriteImage(image, str(path), useCompression=True)


def write_manifest(folder: Path, center: Center, entries: list[tuple[str, Path, Path]], seed: int) -> Path:
    """The manifest `storage.raw_dataset` reads; `entries` are (case id, image path, label path) under `folder`."""
    cases = [
        {"id": case, "image": image.relative_to(folder).as_posix(), "label": label.relative_to(folder).as_posix()}
        for case, image, label in entries
    ]
    manifest = {
        "dataset": folder.name,
        "center": center.name,
        "modality": center.modality,
        "labels": {value: name for name, value in LABELS.items()},
        "cases": cases,
    }
    path = folder / "manifest.yaml"
    header = f"# Synthetic {center.name} data written by storage/synthetic.py (seed {seed}); paths relative to here.\n"
    path.write_text(header + yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    return path


def case_folders(folder: Path) -> tuple[Path, Path]:
    images, labels = folder / "imagesTr", folder / "labelsTr"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    return images, labels


def write_msd(folder: Path, center: Center, cases: Iterator[tuple[str, np.ndarray, np.ndarray]]) -> Path:
    images, labels = case_folders(folder)
    transform = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(center.orientation)
    )
    n_cases = 0
    for case, image, label in cases:
        affine = np.diag([*center.spacing, 1.0]) @ nib.orientations.inv_ornt_aff(transform, image.shape)
        for array, path in ((image, images / f"{case}_0000.nii.gz"), (label, labels / f"{case}.nii.gz")):
            nib.save(nib.Nifti1Image(nib.orientations.apply_orientation(array, transform), affine), path)
        n_cases += 1
    meta = {
        "name": folder.name,
        "center": center.name,
        "channel_names": {"0": center.modality},
        "labels": {"background": 0, **LABELS},
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    return folder


def write_nrrd(folder: Path, center: Center, cases: Iterator[tuple[str, np.ndarray, np.ndarray]], seed: int) -> Path:
    images, labels = case_folders(folder)
    entries = []
    for case, image, label in cases:
        image_path, label_path = images / f"{case}.nrrd", labels / f"{case}.seg.nrrd"
        sitk.WriteImage(_oriented(image, center.spacing, center.orientation), str(image_path), useCompression=True)
        _write_seg_nrrd(label, center, label_path)
        entries.append((case, image_path, label_path))
    return write_manifest(folder, center, entries, seed)


def _write_dicom_series(
    image: sitk.Image, folder: Path, tags: dict[str, str], uid_key: tuple[object, ...], rng: np.random.Generator
) -> None:
    """One file per slice of a 3D `image`, named by a shuffled number; `tags` go into every file."""
    folder.mkdir(parents=True, exist_ok=True)
    n_slices = image.GetSize()[2]
    file_numbers = rng.permutation(n_slices)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(n_slices):
        # A one-slice 3D image, so GDCM writes ImagePositionPatient, ImageOrientationPatient, PixelSpacing and
        # SpacingBetweenSlices from the volume's own geometry.
        slice_image = image[:, :, k : k + 1]
        for tag, value in {**tags, "0008|0018": _uid(*uid_key, "slice", k), "0020|0013": str(k + 1)}.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{file_numbers[k]:04d}.dcm"))
        writer.Execute(slice_image)


def write_dicom(
    folder: Path,
    center: Center,
    cases: Iterator[tuple[str, np.ndarray, np.ndarray]],
    seed: int,
    patient_name: str | None,
    patient_id: str | None,
) -> Path:
    images, labels = case_folders(folder)
    int16 = np.iinfo(np.int16)
    entries = []
    for index, (case, image, label) in enumerate(cases):
        uid_key = (seed, center.name, case)
        tags = {
            "0008|0016": SOP_CLASSES[center.modality],
            # Empty study date and time: GDCM would otherwise stamp the time of writing into every file.
            "0008|0020": "",
            "0008|0030": "",
            "0008|0060": center.modality,
            "0008|103e": f"synthetic {center.name}",
            "0018|0050": f"{center.spacing[2]:g}",
            "0020|000d": _uid(*uid_key, "study"),
            "0020|000e": _uid(*uid_key, "series"),
            "0020|0011": "1",
            "0020|0052": _uid(*uid_key, "frame-of-reference"),
        }
        if patient_name is not None:
            tags["0010|0010"] = patient_name
        if patient_id is not None:
            tags["0010|0020"] = patient_id
        pixels = np.clip(np.round(image), int16.min, int16.max).astype(np.int16)
        series = _oriented(pixels, center.spacing, center.orientation)
        # A stream of its own per case, so the file-name shuffle leaves the synthesized cases untouched.
        _write_dicom_series(
            series, images / case, tags, uid_key, np.random.default_rng([seed, CENTERS.index(center), index])
        )
        label_path = labels / f"{case}.seg.nrrd"
        _write_seg_nrrd(label, center, label_path)
        entries.append((case, images / case, label_path))
    return write_manifest(folder, center, entries, seed)
