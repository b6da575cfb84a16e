"""Seeded multi-center simulator: the same five synthetic structures as three hospitals would deliver them.

`anatomy` synthesizes the cases (RAS arrays of five structures, per-center contrast, noise and geometry); `formats`
writes them as each center's export tool would (NIfTI/MSD, NRRD, DICOM series, 2D PNG). `write_synthetic_datasets`
writes every center's dataset and returns the sources to ingest; the same seed always writes the same pixel data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from storage.synthetic.anatomy import CENTERS, DEFAULT_SHAPE, LABELS, Center, center_cases
from storage.synthetic.formats import case_folders, write_dicom, write_manifest, write_msd, write_nrrd


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
    cases = center_cases(center, n_cases, seed, shape)
    match center.file_format:
        case "nifti":
            return write_msd(folder, center, cases)
        case "nrrd":
            return write_nrrd(folder, center, cases, seed)
        case "dicom":
            return write_dicom(folder, center, cases, seed, patient_name, patient_id)
    raise ValueError(f"{center.name}: unknown file format {center.file_format!r}")


def write_png_dataset(
    root: Path, center: Center, n_cases: int, seed: int, shape: tuple[int, int, int] = DEFAULT_SHAPE
) -> Path:
    """Write the 2D variant of a center's cases (the same cases as `write_center_dataset`) under
    `root/synth-<center>-png`: per case the axial slice showing the most structures as image and label PNGs;
    return the manifest."""
    folder = Path(root) / f"synth-{center.name}-png"
    images, labels = case_folders(folder)
    entries = []
    for case, image, label in center_cases(center, n_cases, seed, shape):
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
    return write_manifest(folder, center, entries, seed)


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
