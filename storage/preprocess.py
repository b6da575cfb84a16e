"""Preprocessing of one raw case into the task store, and the per-case records ingest keeps.

`inspect_case` reads a case once at ingest (content hashes, shape, spacing, a foreground intensity sample for
the fingerprint). `preprocess_case` applies the harmonization recipe and writes the case's slices through a
task store under a content-derived case key (`case_key_for`), so an unchanged case is never redone.
`version_id_for` derives a dataset version's id from its cases' keys and labels, so an unchanged dataset maps
to the same, already complete version.
"""

from __future__ import annotations

import numpy as np

from storage.errors import RawDataError
from storage.fingerprint import foreground_sample
from storage.harmonize import NormalizationParams, normalize_intensity, to_model_grid, volume_slices
from storage.raw_dataset import RawCase
from storage.task_store import SCHEMA_VERSION, TaskStore, content_id
from storage.volumes import file_sha256, read_volume


def inspect_case(case: RawCase, labels: dict[int, str]) -> dict:
    """Hashes, geometry and a foreground sample of one case; raises RawDataError naming the bad file."""
    image = read_volume(case.image)
    label = read_volume(case.label, dtype=np.int32)
    if image.array.shape != label.array.shape:
        raise RawDataError(case.label, f"label shape {label.array.shape} differs from image {image.array.shape}")
    unknown = sorted(set(np.unique(label.array).tolist()) - set(labels) - {0})
    if unknown:
        raise RawDataError(case.label, f"label values {unknown} are not declared in the dataset's labels")
    return {
        "case": case.case_id,
        "image": str(case.image),
        "label": str(case.label),
        "image_sha256": file_sha256(case.image),
        "label_sha256": file_sha256(case.label),
        "shape": list(image.array.shape),
        "spacing": list(image.spacing),
        "foreground_sample": foreground_sample(image.array, label.array, seed=0),
    }


def case_key_for(case: dict, params: NormalizationParams, resolution: int, axis: int, empty_fraction: float) -> str:
    """Content-derived key of one harmonized case: its sources and every recipe parameter."""
    return content_id(
        {
            "schema": SCHEMA_VERSION,
            "image": case["image_sha256"],
            "label": case["label_sha256"],
            "normalization": params.to_dict(),
            "resolution": resolution,
            "axis": axis,
            "empty_fraction": empty_fraction,
        }
    )


def version_id_for(record: dict, case_keys: list[str]) -> str:
    """Content-derived id of the dataset version listing `case_keys` under the record's labels."""
    names = sorted(zip((c["case"] for c in record["cases"]), case_keys, strict=True))
    return content_id({"schema": SCHEMA_VERSION, "cases": names, "labels": record["labels"]})


def select_slices(labels: np.ndarray, empty_fraction: float, seed: int) -> list[int]:
    """Every slice with a label, plus a seeded `empty_fraction` of the empty ones (as negatives)."""
    has_label = labels.reshape(len(labels), -1).any(axis=1)
    empty = np.flatnonzero(~has_label)
    keep_empty = np.random.default_rng(seed).choice(empty, round(empty_fraction * len(empty)), replace=False)
    return sorted(np.flatnonzero(has_label).tolist() + keep_empty.tolist())


def preprocess_case(
    store: TaskStore, dataset: str, case: dict, params: NormalizationParams, axis: int, empty_fraction: float
) -> dict:
    """Harmonize one case (record from `inspect_case`) and write its slices; return its index summary."""
    key = case_key_for(case, params, store.resolution, axis, empty_fraction)
    done = store.case_summary(dataset, key, axis)
    if done is not None:
        return done
    image = normalize_intensity(read_volume(case["image"]).array, params)
    label = read_volume(case["label"], dtype=np.int32).array.astype(np.uint8)
    image_slices, label_slices = volume_slices(image, axis), volume_slices(label, axis)
    keep = select_slices(label_slices, empty_fraction, seed=int(case["image_sha256"][:8], 16))
    images, _ = to_model_grid(image_slices[keep], store.resolution)
    labels, _ = to_model_grid(label_slices[keep].astype(np.float32), store.resolution, label=True)
    return store.write_case(dataset, key, case["case"], axis, np.clip(images, 0.0, 1.0), labels.astype(np.uint8), keep)
