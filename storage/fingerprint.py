"""The dataset fingerprint, after nnU-Net: spacings, shapes and foreground intensity statistics, kept as JSON.

Per case, a bounded random sample of foreground intensities is drawn (as nnU-Net does, 10,000 voxels); the
dataset's percentiles, mean and standard deviation come from the pooled samples. CT normalization uses them.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

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


def dataset_fingerprint(cases: list[dict]) -> dict:
    """Combine per-case records (shape, spacing, foreground sample) into the dataset fingerprint."""
    pooled = np.concatenate([np.asarray(case["foreground_sample"], float) for case in cases] or [np.zeros(1)])
    low, high = np.percentile(pooled, PERCENTILES)
    return {
        "shapes": [case["shape"] for case in cases],
        "spacings": [case["spacing"] for case in cases],
        "median_spacing": np.median([case["spacing"] for case in cases], axis=0).tolist(),
        "target_spacing": target_spacing([case["spacing"] for case in cases]),
        "foreground_intensity": {
            "percentile_00_5": float(low),
            "percentile_99_5": float(high),
            "mean": float(pooled.mean()),
            "std": float(pooled.std()),
        },
    }


def fingerprint_hash(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
