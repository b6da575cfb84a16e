"""Seeded multi-center simulator: the same five synthetic structures as three hospitals would deliver them.

A model trained on one hospital's scans meets others that differ in scanner, protocol and export tool, and the
raw readers meet files that differ in format, voxel order and headers. Each simulated center is one dataset with
its own intensity scale and structure contrasts (`center-a` CT-like Hounsfield values; `center-b` an MR contrast
on an arbitrary scale; `center-c` a second, T2-like MR contrast on a larger scale), its own noise level (Gaussian
for CT, Rician for the T2-like magnitude images), multiplicative bias field (none for CT), in-plane voxel
spacing, slice thickness and on-disk axis order. Every case holds five structures of different shapes whose
position and size vary from case to case: a large organ (liver), a bilateral pair (kidney), a thin tube
(vessel), small spheres inside the organ (lesion) and a ring (spine). Cases are synthesized as RAS-ordered arrays
(axis 0 towards the patient's right, 1 anterior, 2 superior); every writer stores them in its center's
orientation with the matching geometry, so a reader that reorients to RAS gets back the same anatomy from every
center. The default grid is 64 × 64 voxels in-plane with 32 slices of 3 mm; a center with other slices gets
proportionally more or fewer, so every center covers the same length of body. The same seed always writes the
same pixel data (and, for DICOM, the same UIDs).

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
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import yaml
from PIL import Image

LABELS = {"liver": 1, "kidney": 2, "vessel": 3, "lesion": 4, "spine": 5}
DEFAULT_SHAPE = (64, 64, 32)
# The default shape's slice count is for 3 mm slices (center-a, as the generator always wrote it).
REFERENCE_SLICE_MM = 3.0
SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}  # CT / MR Image Storage
# Cases are synthesized in RAS voxel order; in SimpleITK's LPS world that is this direction matrix.
_RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Center:
    """One simulated hospital: intensities per structure, noise, bias field, voxel spacing (mm, RAS axes), the
    voxel order its files are stored in (a 3-letter code as nibabel's axcodes and SimpleITK's DICOMOrient take:
    the direction each voxel axis runs towards) and its file format."""

    name: str
    modality: str
    spacing: tuple[float, float, float]
    outside: float
    body: float
    structures: dict[str, float]
    noise: float
    bias_field: float
    rician: bool = False
    orientation: str = "RAS"
    file_format: str = "nifti"

    def grid(self, shape: tuple[int, int, int] = DEFAULT_SHAPE) -> tuple[int, int, int]:
        """This center's voxel grid for a `shape` given at 3 mm slices: same body length, its own slice count."""
        return shape[0], shape[1], max(1, round(shape[2] * REFERENCE_SLICE_MM / self.spacing[2]))


CENTERS = (
    Center(
        "center-a",
        "CT",
        (1.5, 1.5, 3.0),
        outside=-1000.0,
        body=-60.0,
        structures={"liver": 90.0, "kidney": 180.0, "vessel": 280.0, "lesion": 20.0, "spine": 700.0},
        noise=12.0,
        bias_field=0.0,
    ),
    Center(
        "center-b",
        "MR",
        (1.2, 1.2, 4.0),
        outside=0.0,
        body=400.0,
        structures={"liver": 250.0, "kidney": 650.0, "vessel": 900.0, "lesion": 800.0, "spine": 150.0},
        noise=25.0,
        bias_field=0.3,
        orientation="SPL",
        file_format="nrrd",
    ),
    Center(
        "center-c",
        "MR",
        (0.8, 0.8, 2.5),
        outside=0.0,
        body=900.0,
        structures={"liver": 450.0, "kidney": 1300.0, "vessel": 150.0, "lesion": 2600.0, "spine": 300.0},
        noise=90.0,
        bias_field=0.45,
        rician=True,
        orientation="RPI",
        file_format="dicom",
    ),
)


def _ellipsoid(grid: tuple[np.ndarray, ...], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return sum(((axis - c) / r) ** 2 for axis, c, r in zip(grid, center, radii, strict=True)) <= 1.0


def synthesize_case(
    center: Center, rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """One case in RAS voxel order: an intensity volume (float32) and its label map (uint8) on a `shape` grid."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    nx, ny, nz = shape
    label = np.zeros(shape, np.uint8)
    body = ((x - nx / 2) / (0.48 * nx)) ** 2 + ((y - ny / 2) / (0.42 * ny)) ** 2 <= 1.0

    liver_center = np.array([nx * rng.uniform(0.28, 0.40), ny * rng.uniform(0.38, 0.52), nz * rng.uniform(0.4, 0.6)])
    liver_radii = np.array([nx * rng.uniform(0.18, 0.26), ny * rng.uniform(0.16, 0.24), nz * rng.uniform(0.3, 0.45)])
    liver = _ellipsoid((x, y, z), liver_center, liver_radii) & body
    label[liver] = LABELS["liver"]

    for side in (-1, 1):
        kidney_center = np.array(
            [
                nx / 2 + side * nx * rng.uniform(0.20, 0.28),
                ny * rng.uniform(0.60, 0.70),
                nz * rng.uniform(0.35, 0.65),
            ]
        )
        kidney_radii = np.array(
            [nx * rng.uniform(0.07, 0.11), ny * rng.uniform(0.06, 0.09), nz * rng.uniform(0.2, 0.3)]
        )
        label[_ellipsoid((x, y, z), kidney_center, kidney_radii) & body & (label == 0)] = LABELS["kidney"]

    phase, amplitude, radius = rng.uniform(0, 2 * np.pi), nx * rng.uniform(0.02, 0.06), nx * rng.uniform(0.03, 0.05)
    vessel_x = nx * rng.uniform(0.52, 0.58) + amplitude * np.sin(z / nz * 2 * np.pi + phase)
    vessel = ((x - vessel_x) ** 2 + (y - ny * rng.uniform(0.50, 0.56)) ** 2) <= radius**2
    label[vessel & body] = LABELS["vessel"]

    for _ in range(rng.integers(1, 4)):
        offset = rng.uniform(-0.5, 0.5, size=3) * liver_radii
        lesion = _ellipsoid((x, y, z), liver_center + offset, np.full(3, nx * rng.uniform(0.04, 0.08))) & liver
        label[lesion] = LABELS["lesion"]

    spine_r = (x - nx / 2) ** 2 + (y - ny * rng.uniform(0.74, 0.8)) ** 2
    outer, inner = nx * rng.uniform(0.07, 0.1), nx * rng.uniform(0.03, 0.045)
    label[(spine_r <= outer**2) & (spine_r >= inner**2) & body] = LABELS["spine"]

    image = np.full(shape, center.outside, np.float32)
    image[body] = center.body
    for name, value in LABELS.items():
        image[label == value] = center.structures[name]
    if center.bias_field:
        direction = rng.normal(size=3)
        ramp = sum(
            d * (g / n - 0.5) for d, g, n in zip(direction / np.linalg.norm(direction), (x, y, z), shape, strict=True)
        )
        image[body] *= (1.0 + center.bias_field * ramp)[body] * rng.uniform(0.8, 1.3)
    if center.rician:
        # A magnitude image: noise on the real and imaginary channels, then the modulus (never negative).
        real, imaginary = rng.normal(0.0, center.noise, size=(2, *shape)).astype(np.float32)
        return np.hypot(image + real, imaginary), label
    image += rng.normal(0.0, center.noise, size=shape).astype(np.float32)
    return image, label


def _cases(
    center: Center, n_cases: int, seed: int, shape: tuple[int, int, int]
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """The center's cases in order: (case id, RAS image, RAS label); one random stream per (seed, center)."""
    rng = np.random.default_rng([seed, CENTERS.index(center)])
    grid = center.grid(shape)
    for index in range(n_cases):
        yield f"{center.name}_{index:03d}", *synthesize_case(center, rng, grid)


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


def _write_manifest(folder: Path, center: Center, entries: list[tuple[str, Path, Path]], seed: int) -> Path:
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


def _case_folders(folder: Path) -> tuple[Path, Path]:
    images, labels = folder / "imagesTr", folder / "labelsTr"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    return images, labels


def _write_msd(folder: Path, center: Center, cases: Iterator[tuple[str, np.ndarray, np.ndarray]]) -> Path:
    images, labels = _case_folders(folder)
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


def _write_nrrd(folder: Path, center: Center, cases: Iterator[tuple[str, np.ndarray, np.ndarray]], seed: int) -> Path:
    images, labels = _case_folders(folder)
    entries = []
    for case, image, label in cases:
        image_path, label_path = images / f"{case}.nrrd", labels / f"{case}.seg.nrrd"
        sitk.WriteImage(_oriented(image, center.spacing, center.orientation), str(image_path), useCompression=True)
        _write_seg_nrrd(label, center, label_path)
        entries.append((case, image_path, label_path))
    return _write_manifest(folder, center, entries, seed)


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


def _write_dicom(
    folder: Path,
    center: Center,
    cases: Iterator[tuple[str, np.ndarray, np.ndarray]],
    seed: int,
    patient_name: str | None,
    patient_id: str | None,
) -> Path:
    images, labels = _case_folders(folder)
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
    return _write_manifest(folder, center, entries, seed)


def write_center_dataset(
    root: Path,
    center: Center,
    n_cases: int,
    seed: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    patient_name: str | None = None,
    patient_id: str | None = None,
) -> Path:
    """Write one center's dataset under `root/synth-<center>` in the center's file format; return the source to
    ingest: the MSD folder (NIfTI) or the manifest file (NRRD, DICOM). Case i (`<center>_<iii>`) is the i-th draw
    of `synthesize_case(center, rng, center.grid(shape))` from `np.random.default_rng([seed, CENTERS.index(center)])`,
    so a case can be rebuilt in memory. `shape` is the grid at 3 mm slices; the patient name and ID go into DICOM
    headers only."""
    folder = Path(root) / f"synth-{center.name}"
    cases = _cases(center, n_cases, seed, shape)
    match center.file_format:
        case "nifti":
            return _write_msd(folder, center, cases)
        case "nrrd":
            return _write_nrrd(folder, center, cases, seed)
        case "dicom":
            return _write_dicom(folder, center, cases, seed, patient_name, patient_id)
    raise ValueError(f"{center.name}: unknown file format {center.file_format!r}")


def write_png_dataset(
    root: Path, center: Center, n_cases: int, seed: int, shape: tuple[int, int, int] = DEFAULT_SHAPE
) -> Path:
    """Write the 2D variant of a center's cases (the same cases as `write_center_dataset`) under
    `root/synth-<center>-png`: per case the axial slice showing the most structures as image and label PNGs;
    return the manifest."""
    folder = Path(root) / f"synth-{center.name}-png"
    images, labels = _case_folders(folder)
    entries = []
    for case, image, label in _cases(center, n_cases, seed, shape):
        present = np.stack([(label == value).any(axis=(0, 1)) for value in LABELS.values()]).sum(axis=0)
        foreground = np.count_nonzero(label, axis=(0, 1))
        k = max(range(label.shape[2]), key=lambda index: (present[index], foreground[index]))
        # Radiological display of a RAS slice: rows from anterior to posterior, columns from right to left.
        image_slice, label_slice = (np.ascontiguousarray(volume[::-1, ::-1, k].T) for volume in (image, label))
        low, high = np.percentile(image_slice, [0.5, 99.5])
        pixels = np.clip((image_slice - low) / max(high - low, 1e-6) * 255.0, 0, 255).round().astype(np.uint8)
        image_path, label_path = images / f"{case}.png", labels / f"{case}.png"
        Image.fromarray(pixels).save(image_path)
        Image.fromarray(label_slice).save(label_path)
        entries.append((case, image_path, label_path))
    return _write_manifest(folder, center, entries, seed)


def write_synthetic_datasets(
    root: Path,
    n_cases: int = 6,
    seed: int = 0,
    patient_name: str | None = None,
    patient_id: str | None = None,
    *,
    png: bool = False,
) -> list[Path]:
    """Write one dataset per simulated center; return the sources to ingest: center-a's MSD folder and the other
    centers' manifests, then with `png` the 2D variants' manifests. `patient_name` and `patient_id` go into the
    DICOM headers (center-c); without them those elements stay empty."""
    sources = [
        write_center_dataset(root, center, n_cases, seed, patient_name=patient_name, patient_id=patient_id)
        for center in CENTERS
    ]
    if png:
        sources += [write_png_dataset(root, center, n_cases, seed) for center in CENTERS]
    return sources
