"""The synthetic generator, the ingest record and the Zarr task store: determinism, round trip, index, versions,
schema checks."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from storage.errors import RawDataError, StoreSchemaError
from storage.harmonize import from_model_grid, to_model_grid
from storage.ingest_record import IngestRecord
from storage.preprocess import plan_for
from storage.raw_dataset import load_raw_dataset
from storage.synthetic import CENTERS, LABELS, write_center_dataset
from storage.synthetic.anatomy import synthesize_case
from storage.task_store import TaskStore


def test_generator_is_deterministic_and_cases_vary(tmp_path: Path) -> None:
    first = write_center_dataset(tmp_path / "a", CENTERS[0], n_cases=2, seed=7)
    second = write_center_dataset(tmp_path / "b", CENTERS[0], n_cases=2, seed=7)
    for name in ("imagesTr/center-a_000_0000.nii.gz", "labelsTr/center-a_001.nii.gz"):
        assert np.array_equal(nib.load(first / name).get_fdata(), nib.load(second / name).get_fdata())
    rng = np.random.default_rng(0)
    _, label_a = synthesize_case(CENTERS[0], rng, (48, 48, 16))
    _, label_b = synthesize_case(CENTERS[0], rng, (48, 48, 16))
    assert set(np.unique(label_a)) == {0, *LABELS.values()}
    for value in LABELS.values():
        assert not np.array_equal(label_a == value, label_b == value), "position/size should vary per case"


def test_centers_differ_in_intensity_range() -> None:
    ct, ct_label = synthesize_case(CENTERS[0], np.random.default_rng(1), (48, 48, 16))
    mr, mr_label = synthesize_case(CENTERS[1], np.random.default_rng(1), (48, 48, 16))
    assert ct.min() < -500 and mr.min() > -200  # CT-like air vs MR-like non-negative scale
    assert np.median(ct[ct_label == LABELS["spine"]]) > np.median(ct[ct_label == LABELS["liver"]])
    assert np.median(mr[mr_label == LABELS["spine"]]) < np.median(mr[mr_label == LABELS["liver"]])


def test_raw_dataset_reader_for_manifest_and_missing_paths(tmp_path: Path) -> None:
    folder = write_center_dataset(tmp_path, CENTERS[1], n_cases=2, seed=0)
    dataset = load_raw_dataset(folder)
    assert dataset.modality == "MR" and dataset.center == "center-b"
    assert dataset.labels == {value: name for name, value in LABELS.items()}
    assert [case.case_id for case in dataset.cases] == ["center-b_000", "center-b_001"]
    with pytest.raises(RawDataError, match=r"dataset\.json"):
        load_raw_dataset(tmp_path / "missing")


# An ingest record as the ingest flow wrote it before the record was typed (same keys, same order).
EARLIER_RECORD = {
    "dataset": "ds",
    "center": "c",
    "modality": "CT",
    "labels": {"1": "liver", "10": "lesion", "2": "kidney"},
    "source": "/data/ds",
    "fingerprint": {
        "shapes": [[64, 64, 32]],
        "spacings": [[1.5, 1.5, 3.0]],
        "median_spacing": [1.5, 1.5, 3.0],
        "target_spacing": [1.5, 1.5, 3.0],
        "foreground_intensity": {"percentile_00_5": -100.0, "percentile_99_5": 300.0, "mean": 50.0, "std": 20.0},
    },
    "cases": [
        {
            "case": "ds_000",
            "image": "/data/ds/imagesTr/ds_000_0000.nii.gz",
            "label": "/data/ds/labelsTr/ds_000.nii.gz",
            "image_sha256": "a" * 64,
            "label_sha256": "b" * 64,
            "shape": [64, 64, 32],
            "spacing": [1.5, 1.5, 3.0],
            "store_id": "c0123456789abcdef",
        }
    ],
    "rejected": [
        {"dataset": "ds", "case": "ds_001", "file": "labelsTr/ds_001.nii.gz", "problem": "label map is empty"}
    ],
}


def test_an_earlier_ingest_record_loads_and_is_written_back_unchanged(tmp_path: Path) -> None:
    (tmp_path / "ds.json").write_text(json.dumps(EARLIER_RECORD, indent=2))
    record = IngestRecord.load(tmp_path / "ds.json")
    assert record.cases[0].store_id == "c0123456789abcdef" and record.rejected[0].case == "ds_001"
    assert list(record.labels) == ["1", "10", "2"]  # string keys in file order: version ids hash them as before
    assert record.save(tmp_path / "again").read_text() == json.dumps(EARLIER_RECORD, indent=2)
    plan = plan_for(record, 32)
    assert (plan.normalization.low, plan.normalization.high) == (-100.0, 300.0)
    assert plan.target_spacing == (1.5, 1.5, 3.0)
    # keys it does not know (a case still carrying its foreground sample) are ignored; `rejected` may be absent
    older = {k: v for k, v in EARLIER_RECORD.items() if k != "rejected"}
    older["cases"] = [{**EARLIER_RECORD["cases"][0], "foreground_sample": [1.0, 2.0]}]
    (tmp_path / "older.json").write_text(json.dumps(older))
    loaded = IngestRecord.load(tmp_path / "older.json")
    assert loaded.cases == record.cases and loaded.rejected == []


def _write_case(store: TaskStore, dataset: str, key: str, case: str, n: int, value: int) -> tuple[dict, np.ndarray]:
    r = store.resolution
    rng = np.random.default_rng(n)
    images = rng.random((n, r, r)).astype(np.float32)
    labels = np.zeros((n, r, r), np.uint8)
    for i in range(n):
        labels[i, : 2 + i, :3] = value
    summary = store.write_case(dataset, key, 2, images, labels, list(range(10, 10 + n)), grid_spacing_mm=n * 0.5)
    return {**summary, "case": case}, images


def test_store_round_trip_index_and_versions(tmp_path: Path) -> None:
    store = TaskStore.open(str(tmp_path / "store.zarr"), 32, create=True)
    summary_a, images_a = _write_case(store, "ds", "key-a", "case-a", 3, 4)
    summary_b, _ = _write_case(store, "ds", "key-b", "case-b", 2, 4)
    assert store.datasets() == []  # nothing is visible before a version is committed
    meta = {"labels": {"4": "lesion"}, "center": "c", "modality": "CT", "fingerprint": {}, "normalization": {}}
    store.commit_version("ds", "v1", meta, [summary_a, summary_b])
    assert store.datasets() == ["ds"]
    [task] = store.tasks()
    assert task.task_id == "ds/lesion/axis2" and task.cases == ["case-a", "case-b"]
    assert [(s.case, s.index, s.foreground) for s in task.slices[:3]] == [
        ("case-a", 10, 6),
        ("case-a", 11, 9),
        ("case-a", 12, 12),
    ]
    images, masks = store.read_slices(task, list(task.slices[:3]))
    assert images.shape == (3, 32, 32) and masks.dtype == np.uint8
    np.testing.assert_allclose(images, images_a, atol=1e-3)  # float16 storage
    assert masks.sum(axis=(1, 2)).tolist() == [6, 9, 12]
    assert store.grid_spacing_mm("ds") == {("case-a", 2): 1.5, ("case-b", 2): 1.0}

    snapshot = store.snapshot_id()
    reopened = TaskStore.open(str(tmp_path / "store.zarr"), 32)
    assert reopened.snapshot_id() == snapshot
    store.commit_version("ds", "v2", {**meta, "center": "other"}, [summary_a])
    assert store.current_version("ds") == "v2" and store.snapshot_id() != snapshot
    assert store.has_complete_version("ds", "v1")  # old versions stay, immutable


def test_prune_keeps_the_current_and_recent_versions_and_the_cases_they_list(tmp_path: Path) -> None:
    store = TaskStore.open(str(tmp_path / "store.zarr"), 32, create=True)
    meta = {"labels": {"4": "lesion"}, "center": "c", "modality": "CT", "fingerprint": {}, "normalization": {}}
    summaries = {key: _write_case(store, "ds", key, f"case-{key}", 2, 4)[0] for key in ("a", "b", "c")}
    store.commit_version("ds", "v1", meta, [summaries["a"]])
    store.commit_version("ds", "v2", meta, [summaries["b"]])
    store.commit_version("ds", "v3", meta, [summaries["b"], summaries["c"]])
    snapshot = store.snapshot_id()
    assert store.prune(keep_versions=2) == {"versions": 1, "cases": 1}  # v1 and case a, which only v1 listed
    assert store.has_complete_version("ds", "v2") and not store.has_complete_version("ds", "v1")
    assert store.snapshot_id() == snapshot and len(store.tasks()[0].slices) > 0  # readers see no change
    assert store.prune(keep_versions=1) == {"versions": 1, "cases": 0}  # case b is still listed by v3


def test_store_urls_go_through_fsspec(tmp_path: Path) -> None:
    store = TaskStore.open("memory://promptseg-test-store", 32, create=True)
    summary, images = _write_case(store, "ds", "key", "case", 2, 1)
    store.commit_version("ds", "v1", {"labels": {"1": "organ"}}, [summary])
    reopened = TaskStore.open("memory://promptseg-test-store", 32)
    [task] = reopened.tasks()
    read, masks = reopened.read_slices(task, list(task.slices))
    np.testing.assert_allclose(read, images, atol=1e-3)
    assert masks.sum() == 6 + 9


def test_store_refuses_other_resolution_and_schema(tmp_path: Path) -> None:
    url = str(tmp_path / "store.zarr")
    store = TaskStore.open(url, 32, create=True)
    with pytest.raises(StoreSchemaError, match="resolution 32, expected 64"):
        TaskStore.open(url, 64)
    store._root.attrs.update({"schema_version": 99})
    with pytest.raises(StoreSchemaError, match="schema version 99"):
        TaskStore.open(url)
    with pytest.raises(StoreSchemaError, match="no task store"):
        TaskStore.open(str(tmp_path / "absent.zarr"))


def test_model_grid_round_trip_restores_native_geometry() -> None:
    label = np.zeros((1, 30, 50), np.float32)
    label[0, 5:20, 10:40] = 1
    grid, geometry = to_model_grid(label, 64, label=True)
    assert grid.shape == (1, 64, 64) and set(np.unique(grid)) == {0.0, 1.0}
    back = from_model_grid(grid, geometry, label=True)
    assert back.shape == (1, 30, 50)
    assert (back == label).mean() > 0.98
