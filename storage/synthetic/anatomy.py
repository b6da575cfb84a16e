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

The file formats each center writes are described in `storage.synthetic_formats`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

LABELS = {"liver": 1, "kidney": 2, "vessel": 3, "lesion": 4, "spine": 5}
DEFAULT_SHAPE = (64, 64, 32)
# The default shape's slice count is for 3 mm slices (center-a, as the generator always wrote it).
REFERENCE_SLICE_MM = 3.0


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


def center_cases(
    center: Center, n_cases: int, seed: int, shape: tuple[int, int, int]
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """The center's cases in order: (case id, RAS image, RAS label); one random stream per (seed, center)."""
    rng = np.random.default_rng([seed, CENTERS.index(center)])
    grid = center.grid(shape)
    for index in range(n_cases):
        yield f"{center.name}_{index:03d}", *synthesize_case(center, rng, grid)
