"""The dataset fingerprint, after nnU-Net: spacings, shapes and foreground intensity statistics, kept as JSON.

Per case, a bounded random sample of foreground intensities is drawn (as nnU-Net does, 10,000 voxels); the
dataset's percentiles, mean and standard deviation come from the pooled samples. CT normalization uses them.
The `Fingerprint` is part of the dataset's ingest record (storage.ingest_record) and of every store version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from storage.harmonize import PERCENTILES

SAMPLES_PER_CASE = 10_000


def foreground_sample(image: np.ndarray, label: np.ndarray, seed: int) -> list[float]:
    """Up to SAMPLES_PER_CASE intensities drawn from the labelled voxels of one case."""
    values = image[label > 0]
    if values.size > SAMPLES_PER_CASE:
        values = np.random.default_rng(seed).choice(values, SAMPLES_PER_CASE, replace=False)
    return values.astype(float).tolist()


ANISOTROPY_RATIO = 3.0


def target_spacing(spacings: list[list[float]]) -> list[float]:
    """nnU-Net's rule: the median spacing per axis; for anisotropic data (the coarsest median axis more than
    3× the finest) the coarse axis takes the 10th percentile of its spacings instead, so thin slices are not
    thrown away by resampling every case to the thickest ones."""
    values = np.asarray(spacings, dtype=float)
    target = np.median(values, axis=0)
    coarse = int(np.argmax(target))
    if target[coarse] > ANISOTROPY_RATIO * target.min():
        target[coarse] = np.percentile(values[:, coarse], 10)
    return target.tolist()


class ForegroundIntensity(BaseModel):
    """Statistics of the pooled foreground samples."""

    model_config = ConfigDict(frozen=True)

    percentile_00_5: float
    percentile_99_5: float
    mean: float
    std: float


class Fingerprint(BaseModel):
    """A dataset's fingerprint: per-case shapes and spacings (mm), the median and target spacing, the foreground
    intensity statistics."""

    model_config = ConfigDict(frozen=True)

    shapes: list[list[int]]
    spacings: list[list[float]]
    median_spacing: list[float]
    target_spacing: list[float]
    foreground_intensity: ForegroundIntensity

    @property
    def foreground_percentiles(self) -> tuple[float, float]:
        """The 0.5 and 99.5 percentiles of the foreground intensities (CT normalization clips to them)."""
        return self.foreground_intensity.percentile_00_5, self.foreground_intensity.percentile_99_5


def dataset_fingerprint(
    shapes: Sequence[list[int]], spacings: Sequence[list[float]], samples: Sequence[list[float]]
) -> Fingerprint:
    """Combine the cases' shapes, spacings and foreground samples (one each per case) into the dataset fingerprint."""
    pooled = np.concatenate([np.asarray(sample, float) for sample in samples] or [np.zeros(1)])
    low, high = np.percentile(pooled, PERCENTILES)
    return Fingerprint(
        shapes=list(shapes),
        spacings=list(spacings),
        median_spacing=np.median(spacings, axis=0).tolist(),
        target_spacing=target_spacing(list(spacings)),
        foreground_intensity=ForegroundIntensity(
            percentile_00_5=float(low), percentile_99_5=float(high), mean=float(pooled.mean()), std=float(pooled.std())
        ),
    )


def fingerprint_hash(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
