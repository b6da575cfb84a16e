"""The dataset fingerprint, after nnU-Net: spacings, shapes and foreground intensity statistics, kept as JSON.

Per case and label, a bounded random sample of the label's intensities is drawn (as nnU-Net does for the
foreground, 10,000 voxels); the dataset's foreground percentiles, mean and standard deviation come from the pooled
samples, and each label keeps a quantile sketch of its own samples (`label_quantiles`), from which the store's one
CT window is pooled over the training labels only (storage.ct_window). A case of an image-only dataset has no
label: a sample of its whole image stands in for the foreground (under value 0, which gets no sketch).
The `Fingerprint` is part of the dataset's ingest record (storage.ingest_record) and of every store version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from storage.harmonize import PERCENTILES

SAMPLES_PER_CASE = 10_000


SKETCH_POINTS = 1001  # quantiles at 0, 0.1, …, 100 %: fine enough in the tails the window is cut from


def label_samples(image: np.ndarray, label: np.ndarray, seed: int) -> dict[int, list[float]]:
    """Per label value present, up to SAMPLES_PER_CASE intensities drawn from its voxels in one case."""
    rng = np.random.default_rng(seed)
    samples = {}
    for value in np.unique(label[label > 0]).tolist():
        values = image[label == value]
        if values.size > SAMPLES_PER_CASE:
            values = rng.choice(values, SAMPLES_PER_CASE, replace=False)
        samples[int(value)] = values.astype(float).tolist()
    return samples


def image_samples(image: np.ndarray, seed: int) -> dict[int, list[float]]:
    """Up to SAMPLES_PER_CASE intensities of the whole image, under 0: the foreground of an image-only case."""
    values = image.ravel()
    if values.size > SAMPLES_PER_CASE:
        values = np.random.default_rng(seed).choice(values, SAMPLES_PER_CASE, replace=False)
    return {0: values.astype(float).tolist()}


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


class LabelIntensity(BaseModel):
    """A quantile sketch of one label's pooled intensity samples: SKETCH_POINTS evenly spaced quantiles and the
    number of samples they summarize."""

    model_config = ConfigDict(frozen=True)

    quantiles: list[float]
    samples: int


class Fingerprint(BaseModel):
    """A dataset's fingerprint: per-case shapes and spacings (mm), the median and target spacing, the foreground
    intensity statistics and, per label value, its intensity sketch (empty in records ingested before sketches)."""

    model_config = ConfigDict(frozen=True)

    shapes: list[list[int]]
    spacings: list[list[float]]
    median_spacing: list[float]
    target_spacing: list[float]
    foreground_intensity: ForegroundIntensity
    label_intensity: dict[str, LabelIntensity] = {}

    @model_serializer(mode="wrap")
    def _without_empty_sketches(self, handler: SerializerFunctionWrapHandler) -> dict:
        """A record ingested before sketches is written back exactly as it was read (its ids hash the same)."""
        data = handler(self)
        if not data.get("label_intensity"):
            data.pop("label_intensity", None)
        return data

    @property
    def foreground_percentiles(self) -> tuple[float, float]:
        """The 0.5 and 99.5 percentiles of the foreground intensities (CT normalization clips to them)."""
        return self.foreground_intensity.percentile_00_5, self.foreground_intensity.percentile_99_5


def dataset_fingerprint(
    shapes: Sequence[list[int]], spacings: Sequence[list[float]], samples: Sequence[dict[int, list[float]]]
) -> Fingerprint:
    """Combine the cases' shapes, spacings and label samples (one each per case) into the dataset fingerprint."""
    by_label: dict[int, list[float]] = {}
    for case in samples:
        for value, values in case.items():
            by_label.setdefault(int(value), []).extend(values)
    pooled = np.concatenate([np.asarray(v, float) for v in by_label.values()] or [np.zeros(1)])
    low, high = np.percentile(pooled, PERCENTILES)
    grid = np.linspace(0, 100, SKETCH_POINTS)
    return Fingerprint(
        shapes=list(shapes),
        spacings=list(spacings),
        median_spacing=np.median(spacings, axis=0).tolist(),
        target_spacing=target_spacing(list(spacings)),
        foreground_intensity=ForegroundIntensity(
            percentile_00_5=float(low), percentile_99_5=float(high), mean=float(pooled.mean()), std=float(pooled.std())
        ),
        label_intensity={
            str(value): LabelIntensity(quantiles=np.percentile(values, grid).tolist(), samples=len(values))
            for value, values in sorted(by_label.items())
            if values and value != 0
        },
    )


def fingerprint_hash(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
