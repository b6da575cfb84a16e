"""Preprocessing of one raw case into the task store, under a plan derived from the dataset fingerprint.

A `PreprocessPlan` (after nnU-Net's plans file) fixes everything besides the sources that determines a harmonized
case: intensity normalization, target spacing, resolution, slicing axes, the share of empty slices kept.
`preprocess_case` reads the case, normalizes, resamples to the target spacing (storage.harmonize), cuts slices
along each axis, fits them to the store's grid keeping their physical aspect, and writes them under a content key
(`case_key_for`: source hashes + plan + the code version of the recipe), so an unchanged case is never redone and
any change of inputs or code makes a new one. `version_id_for` names a dataset version by its cases' keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np

from storage import harmonize, readers
from storage.harmonize import (
    NormalizationParams,
    normalization_from_fingerprint,
    normalize_intensity,
    resample_volume,
    resampled_shape,
    to_model_grid,
    volume_slices,
)
from storage.readers import read_volume
from storage.task_store import SCHEMA_VERSION, TaskStore, content_id

MIN_SLICE_SIDE = 8  # an axis whose slices would be thinner than this (e.g. across a 2D image) is not sliced


@dataclass(frozen=True)
class PreprocessPlan:
    normalization: NormalizationParams
    target_spacing: tuple[float, float, float]
    resolution: int
    axes: tuple[int, ...] = (0, 1, 2)
    empty_fraction: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessPlan:
        return cls(
            **{
                **data,
                "normalization": NormalizationParams(**data["normalization"]),
                "target_spacing": tuple(data["target_spacing"]),
                "axes": tuple(data["axes"]),
            }
        )


def plan_for(
    record: dict,
    resolution: int,
    axes: tuple[int, ...] = (0, 1, 2),
    empty_fraction: float = 0.1,
    ct_window: tuple[float, float] | None = None,
) -> PreprocessPlan:
    """The plan of an ingested dataset (its record holds modality and fingerprint)."""
    fingerprint = record["fingerprint"]
    return PreprocessPlan(
        normalization=normalization_from_fingerprint(record["modality"], fingerprint, ct_window),
        target_spacing=tuple(fingerprint["target_spacing"]),
        resolution=resolution,
        axes=tuple(axes),
        empty_fraction=empty_fraction,
    )


@cache
def recipe_code_version() -> str:
    """Hash of the code that turns sources into slices: a change to it gives every case a new key."""
    digest = hashlib.sha256()
    sources = [Path(harmonize.__file__), Path(__file__), *sorted(Path(readers.__file__).parent.glob("*.py"))]
    for source in sources:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def case_key_for(case: dict, plan: PreprocessPlan) -> str:
    """Content-derived key of one harmonized case."""
    return content_id(
        {
            "schema": SCHEMA_VERSION,
            "code": recipe_code_version(),
            "image": case["image_sha256"],
            "label": case["label_sha256"],
            "plan": plan.to_dict(),
        }
    )


def version_id_for(record: dict, case_keys: list[str]) -> str:
    """Content-derived id of the dataset version listing `case_keys` under the record's labels."""
    names = sorted(zip((c["store_id"] for c in record["cases"]), case_keys, strict=True))
    return content_id({"schema": SCHEMA_VERSION, "cases": names, "labels": record["labels"]})


def select_slices(labels: np.ndarray, empty_fraction: float, seed: int) -> list[int]:
    """Every slice with a label, plus a seeded `empty_fraction` of the empty ones (as negatives)."""
    has_label = labels.reshape(len(labels), -1).any(axis=1)
    empty = np.flatnonzero(~has_label)
    keep_empty = np.random.default_rng(seed).choice(empty, round(empty_fraction * len(empty)), replace=False)
    return sorted(np.flatnonzero(has_label).tolist() + keep_empty.tolist())


def sliced_axes(case: dict, plan: PreprocessPlan) -> list[int]:
    """The plan axes along which the resampled case has slices at least MIN_SLICE_SIDE voxels on both sides."""
    shape = resampled_shape(case["shape"], case["spacing"], plan.target_spacing)
    return [a for a in plan.axes if min(n for i, n in enumerate(shape) if i != a) >= MIN_SLICE_SIDE]


def preprocess_case(store: TaskStore, dataset: str, case: dict, plan: PreprocessPlan) -> list[dict]:
    """Harmonize one case (its ingest record) and write its slices along every plan axis; one summary per axis."""
    key = case_key_for(case, plan)
    summaries = {axis: store.case_summary(dataset, key, axis) for axis in sliced_axes(case, plan)}
    if all(summary is not None for summary in summaries.values()):
        return [{**summary, "case": case["store_id"]} for summary in summaries.values()]
    image = read_volume(Path(case["image"]))
    label = read_volume(Path(case["label"]), dtype=np.int32)
    normalized = normalize_intensity(image.array, plan.normalization)
    normalized = resample_volume(normalized, image.spacing, plan.target_spacing)
    label_map = resample_volume(label.array.astype(np.uint8), label.spacing, plan.target_spacing, label=True)
    written = []
    for axis in summaries:
        if summaries[axis] is not None:
            written.append(summaries[axis])
            continue
        in_plane = tuple(s for i, s in enumerate(plan.target_spacing) if i != axis)
        image_slices, label_slices = volume_slices(normalized, axis), volume_slices(label_map, axis)
        keep = select_slices(label_slices, plan.empty_fraction, seed=int(case["image_sha256"][:8], 16) + axis)
        images, _ = to_model_grid(image_slices[keep], plan.resolution, spacing=in_plane)
        labels, _ = to_model_grid(label_slices[keep].astype(np.float32), plan.resolution, label=True, spacing=in_plane)
        written.append(store.write_case(dataset, key, axis, np.clip(images, 0.0, 1.0), labels.astype(np.uint8), keep))
    # Case arrays are content-addressed and may be shared by several cases: the case id belongs to the summary
    # this case contributes to its dataset version, not to the arrays.
    return [{**summary, "case": case["store_id"]} for summary in written]
