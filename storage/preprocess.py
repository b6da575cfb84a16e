"""Preprocessing of one raw case into the task store, under a plan derived from the dataset fingerprint.

A `PreprocessPlan` (after nnU-Net's plans file) fixes everything besides the sources that determines a harmonized
case: intensity normalization, target spacing, resolution, slicing axes, the share of empty slices kept; `plan_for`
derives it from a dataset's ingest record (storage.ingest_record).
`preprocess_case` reads the case and prepares it by the one path serving uses too (storage.preparation: normalize,
resample to the target spacing, cut slices along each axis, fit them to the store's grid keeping their physical
aspect), and writes them under a content key
(`case_key_for`: source hashes + plan + the code version of the recipe), so an unchanged case is never redone and
any change of inputs or code makes a new one. `version_id_for` names a dataset version by its cases' keys;
`commit_dataset_version` makes the version of the cases written current (the preprocess flow's last step per
dataset). A case of an image-only dataset (no label) keeps every slice, with an empty label map: its dataset holds
no tasks, only images for self-supervised training.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np

from storage import harmonize, preparation, readers
from storage.harmonize import NormalizationParams, normalization_for, resampled_shape, volume_slices
from storage.ingest_record import CaseRecord, IngestRecord
from storage.preparation import Preparation, PreparedVolume, model_slices, resampled_labels
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

    @property
    def preparation(self) -> Preparation:
        return Preparation(self.normalization, self.target_spacing, self.resolution)


def plan_for(
    record: IngestRecord,
    resolution: int,
    axes: tuple[int, ...] = (0, 1, 2),
    empty_fraction: float = 0.1,
    ct_window: tuple[float, float] | None = None,
) -> PreprocessPlan:
    """The plan of an ingested dataset from its modality and fingerprint; a CT window overrides the percentiles."""
    fingerprint = record.fingerprint
    return PreprocessPlan(
        normalization=normalization_for(record.modality, fingerprint.foreground_percentiles, ct_window),
        target_spacing=tuple(fingerprint.target_spacing),
        resolution=resolution,
        axes=tuple(axes),
        empty_fraction=empty_fraction,
    )


@cache
def recipe_code_version() -> str:
    """Hash of the code that turns sources into slices: a change to it gives every case a new key."""
    digest = hashlib.sha256()
    sources = [
        Path(harmonize.__file__),
        Path(preparation.__file__),
        Path(__file__),
        *sorted(Path(readers.__file__).parent.glob("*.py")),
    ]
    for source in sources:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def case_key_for(case: CaseRecord, plan: PreprocessPlan) -> str:
    """Content-derived key of one harmonized case."""
    return content_id(
        {
            "schema": SCHEMA_VERSION,
            "code": recipe_code_version(),
            "image": case.image_sha256,
            "label": case.label_sha256,
            "plan": plan.to_dict(),
        }
    )


def version_id_for(record: IngestRecord, plan: PreprocessPlan) -> str:
    """Content-derived id of the dataset version listing the record's cases, harmonized under `plan`, its labels and
    its licence (when stated)."""
    names = sorted((case.store_id, case_key_for(case, plan)) for case in record.cases)
    licence = {"licence": record.licence} if record.licence else {}
    return content_id({"schema": SCHEMA_VERSION, "cases": names, "labels": record.labels, **licence})


def select_slices(labels: np.ndarray, empty_fraction: float, seed: int) -> list[int]:
    """Every slice with a label, plus a seeded `empty_fraction` of the empty ones (as negatives)."""
    has_label = labels.reshape(len(labels), -1).any(axis=1)
    empty = np.flatnonzero(~has_label)
    keep_empty = np.random.default_rng(seed).choice(empty, round(empty_fraction * len(empty)), replace=False)
    return sorted(np.flatnonzero(has_label).tolist() + keep_empty.tolist())


def sliced_axes(case: CaseRecord, plan: PreprocessPlan) -> list[int]:
    """The plan axes along which the resampled case has slices at least MIN_SLICE_SIDE voxels on both sides."""
    shape = resampled_shape(case.shape, case.spacing, plan.target_spacing)
    return [a for a in plan.axes if min(n for i, n in enumerate(shape) if i != a) >= MIN_SLICE_SIDE]


def preprocess_case(store: TaskStore, dataset: str, case: CaseRecord, plan: PreprocessPlan) -> list[dict]:
    """Harmonize one case of an ingest record and write its slices along every plan axis; one summary per axis
    (`TaskStore.write_case`'s, with the case's `store_id` as `case`)."""
    key = case_key_for(case, plan)
    summaries = {axis: store.case_summary(dataset, key, axis) for axis in sliced_axes(case, plan)}
    if all(summary is not None for summary in summaries.values()):
        return [{**summary, "case": case.store_id} for summary in summaries.values()]
    scan = read_volume(Path(case.image))
    image = PreparedVolume(scan, plan.preparation)
    if case.label is not None:
        label_volume, empty_fraction = read_volume(Path(case.label), dtype=np.int32), plan.empty_fraction
    else:  # image-only: every slice, none labelled
        label_volume, empty_fraction = replace(scan, array=np.zeros(scan.array.shape, np.int32)), 1.0
    label_map = resampled_labels(label_volume, plan.target_spacing)
    written = []
    for axis in summaries:
        if summaries[axis] is not None:
            written.append(summaries[axis])
            continue
        seed = int(case.image_sha256[:8], 16) + axis
        keep = select_slices(volume_slices(label_map, axis), empty_fraction, seed)
        images, geometry = image.slices(axis, keep)
        labels, _ = model_slices(label_map, axis, plan.preparation, keep, label=True)
        pixel_mm = plan.preparation.grid_spacing_mm(axis, geometry)
        written.append(store.write_case(dataset, key, axis, images, labels.astype(np.uint8), keep, pixel_mm))
    # Case arrays are content-addressed and may be shared by several cases: the case id belongs to the summary
    # this case contributes to its dataset version, not to the arrays.
    return [{**summary, "case": case.store_id} for summary in written]


def commit_dataset_version(store: TaskStore, record: IngestRecord, plan: PreprocessPlan, summaries: list[dict]) -> str:
    """Make the version of `record`'s cases (every one written under `plan`; `summaries` are their
    `preprocess_case` summaries) the dataset's current one: written and marked complete first unless it exists
    complete already. Returns its id."""
    version = version_id_for(record, plan)
    if store.has_complete_version(record.dataset, version):
        if record.dataset not in store.datasets() or store.current_version(record.dataset) != version:
            store.point_current(record.dataset, version)
        return version
    meta = {
        "center": record.center,
        "modality": record.modality,
        "labels": record.labels,
        "fingerprint": record.fingerprint.model_dump(),
        "normalization": plan.normalization.to_dict(),
        "plan": plan.to_dict(),
        "source_hashes": {
            case.store_id: {"image": case.image_sha256, "label": case.label_sha256} for case in record.cases
        },
    }
    if record.licence:
        meta["licence"] = record.licence
    store.commit_version(record.dataset, version, meta, summaries)
    return version
