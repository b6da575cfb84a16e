"""Seeded generator of a small synthetic multi-center dataset in the MSD / nnU-Net raw layout (NIfTI).

Each center is one dataset with its own intensity scale: `center-a` is CT-like (Hounsfield-like values),
`center-b` is MR-like (arbitrary scale, a smooth bias field, different structure contrasts). Every case holds
five structures of different shapes whose position and size vary from case to case: a large organ (liver), a
bilateral pair (kidney), a thin tube (vessel), small spheres inside the organ (lesion) and a ring (spine).
The same seed always writes the same files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

LABELS = {"liver": 1, "kidney": 2, "vessel": 3, "lesion": 4, "spine": 5}


@dataclass(frozen=True)
class Center:
    name: str
    modality: str
    spacing: tuple[float, float, float]
    outside: float
    body: float
    structures: dict[str, float]
    noise: float
    bias_field: float


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
    ),
)


def _ellipsoid(grid: tuple[np.ndarray, ...], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return sum(((axis - c) / r) ** 2 for axis, c, r in zip(grid, center, radii, strict=True)) <= 1.0


def synthesize_case(
    center: Center, rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """One case: an intensity volume (float32) and its label map (uint8) on a `shape` grid."""
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
    image += rng.normal(0.0, center.noise, size=shape).astype(np.float32)
    return image, label


def write_center_dataset(
    root: Path, center: Center, n_cases: int, seed: int, shape: tuple[int, int, int] = (64, 64, 32)
) -> Path:
    """Write one center's dataset in the nnU-Net v2 raw layout under `root/<synth-center>`; return its folder."""
    folder = Path(root) / f"synth-{center.name}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, CENTERS.index(center)])
    affine = np.diag([*center.spacing, 1.0])
    for index in range(n_cases):
        image, label = synthesize_case(center, rng, shape)
        case = f"{center.name}_{index:03d}"
        nib.save(nib.Nifti1Image(image, affine), folder / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), folder / "labelsTr" / f"{case}.nii.gz")
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


def write_synthetic_datasets(root: Path, n_cases: int = 6, seed: int = 0) -> list[Path]:
    """Write one dataset per simulated center; return their folders."""
    return [write_center_dataset(root, center, n_cases, seed) for center in CENTERS]
