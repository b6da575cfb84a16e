"""Ingest's checks case by case, without Prefect: shared case ids, unusable entries, image-only datasets, symbolic
link loops, absolute record paths, owner-only records and store, and failures that name no source path.

Every dataset is a manifest of small NIfTI volumes written in tmp_path.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from pipelines import environment
from pipelines.flows import CaseFailed, preprocess_case_task
from pipelines.settings import Settings
from storage.errors import Problem
from storage.ingest_record import Failure, IngestRecord
from storage.preprocess import commit_dataset_version, plan_for, preprocess_case
from storage.privacy import keyed_case_id
from storage.raw_dataset import load_raw_dataset
from storage.task_store import TaskStore
from storage.verify import check_case, dataset_root, verify_dataset

SHAPE = (20, 20, 10)
SECRET = b"unit-tests"
PATIENT = "MRN-0042"  # a source case id and file name that must stay in the ingest records


def _volume(path: Path, data: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), path)
    return path.name


def _case(folder: Path, name: str, labelled: bool = True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(len(name)).normal(100, 10, SHAPE).astype(np.float32)
    entry = {"id": name, "image": _volume(folder / f"{name}.nii.gz", image)}
    if labelled:
        label = np.zeros(SHAPE, np.uint8)
        label[5:12, 6:14, 2:7] = 1
        entry["label"] = _volume(folder / f"{name}_seg.nii.gz", label)
    return entry


def _manifest(folder: Path, cases: list, **extra: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"dataset": folder.name, "modality": "MR", "labels": {1: "organ"}, "cases": cases, **extra}
    (folder / "manifest.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return folder / "manifest.yaml"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cases_sharing_an_id_are_each_reported_and_the_others_land(tmp_path: Path) -> None:
    folder = tmp_path / "dup"
    folder.mkdir()
    cases = [_case(folder, "a"), _case(folder, "b"), _case(folder, "c")]
    cases[2]["id"] = "a"  # a second case "a" (the report's NIfTI case replaced by a DICOM series)
    dataset, problems = verify_dataset(_manifest(folder, cases))
    assert [case.case_id for case in dataset.cases] == ["b"]
    assert [(p.case, p.file) for p in problems] == [("a", "a.nii.gz"), ("a", "c.nii.gz")]
    assert all("2 cases of this dataset have this case id" in p.problem for p in problems)


def test_unusable_entries_are_reported_per_case_and_only_image_only_datasets_may_lack_labels(tmp_path: Path) -> None:
    folder = tmp_path / "entries"
    folder.mkdir()
    good, no_label, null_label = _case(folder, "good"), _case(folder, "nolabel", False), _case(folder, "null")
    null_label["label"] = None
    numeric = {"id": 7, "image": 123, "label": "x.nii.gz"}
    dataset = load_raw_dataset(_manifest(folder, [good, no_label, null_label, "just text", {"image": "a"}, numeric]))
    assert [case.case_id for case in dataset.cases] == ["good"]
    assert dataset.problems == [
        Problem("nolabel", "manifest.yaml", "case 2 has no 'label'"),
        Problem("null", "manifest.yaml", "case 3 has no 'label'"),
        Problem("entry 4", "manifest.yaml", "case 4 is not a mapping of 'id', 'image', 'label'"),
        Problem("entry 5", "manifest.yaml", "case 5 has no 'id', 'label'"),
        Problem("7", "manifest.yaml", "case 6: 'image' must be a path (text)"),
    ]

    image_only = load_raw_dataset(_manifest(tmp_path / "ssl", [_case(tmp_path / "ssl", "u", False)], labelled=False))
    assert image_only.labelled is False and not image_only.problems
    [case] = image_only.cases
    checked, problems = check_case(case, image_only.labels, dataset_root(tmp_path / "ssl" / "manifest.yaml"))
    assert not problems and checked.source.label is None and checked.source.label_sha256 is None
    with pytest.raises(Exception, match="'labelled' must be true or false"):
        load_raw_dataset(_manifest(tmp_path / "bad", [], labelled="no"))


def test_an_image_only_dataset_lands_in_the_store_without_tasks(tmp_path: Path) -> None:
    folder = tmp_path / "ssl"
    manifest = _manifest(folder, [_case(folder, "u0", False), _case(folder, "u1", False)], labelled=False)
    dataset = load_raw_dataset(manifest)
    checked = [check_case(case, dataset.labels, folder)[0] for case in dataset.cases]
    record = IngestRecord.from_checked(dataset, manifest, checked, [], SECRET)
    assert record.labelled is False and IngestRecord.load(record.save(tmp_path / "raw")) == record
    store = TaskStore.open(str(tmp_path / "store.zarr"), 32, create=True)
    plan = plan_for(record, 32)
    summaries = [s for case in record.cases for s in preprocess_case(store, record.dataset, case, plan)]
    commit_dataset_version(store, record, plan, summaries)
    assert store.datasets() == ["ssl"] and store.tasks() == []
    axial = [s for s in summaries if s["axis"] == 2]
    assert [len(s["indices"]) for s in axial] == [SHAPE[2], SHAPE[2]]  # every slice, none labelled


def test_a_stated_licence_reaches_the_store_and_makes_a_version_of_its_own(tmp_path: Path) -> None:
    """The manifest's licence goes into the ingest record and the dataset version's metadata (what model cards
    list); the same cases without it give the record and version id of before licences were recorded."""
    folder = tmp_path / "licensed"
    cases = [_case(folder, "a")]
    store = TaskStore.open(str(tmp_path / "store.zarr"), 32, create=True)
    versions = {}
    for licence in ("CC-BY-4.0", None):
        manifest = _manifest(folder, cases, **({"licence": licence} if licence else {}))
        dataset = load_raw_dataset(manifest)
        checked = [check_case(case, dataset.labels, folder)[0] for case in dataset.cases]
        record = IngestRecord.from_checked(dataset, manifest, checked, [], SECRET)
        assert IngestRecord.load(record.save(tmp_path / "raw")) == record
        written = json.loads((tmp_path / "raw" / "licensed.json").read_text())
        assert written.get("licence") == licence  # absent, not empty, when the manifest states none
        plan = plan_for(record, 32)
        summaries = [s for case in record.cases for s in preprocess_case(store, record.dataset, case, plan)]
        versions[licence] = commit_dataset_version(store, record, plan, summaries)
        assert store.version_info("licensed").get("licence") == licence
    assert versions["CC-BY-4.0"] != versions[None]


def test_a_symbolic_link_loop_is_a_problem_of_its_case(tmp_path: Path) -> None:
    folder = tmp_path / "loops"
    folder.mkdir()
    good, looped, inside = _case(folder, "good"), _case(folder, "looped"), _case(folder, "inside")
    (folder / "loop.nii.gz").symlink_to(folder / "loop.nii.gz")
    looped["image"] = "loop.nii.gz"
    (folder / "cycle").symlink_to(folder / "cycle")
    inside["label"] = "cycle/label.nii.gz"
    _, problems = verify_dataset(_manifest(folder, [good, looped, inside]))
    assert [(p.case, p.file) for p in problems] == [("looped", "loop.nii.gz"), ("inside", "cycle/label.nii.gz")]
    assert all("symbolic link loop" in p.problem for p in problems)


def test_records_hold_absolute_paths_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "rel"
    _manifest(folder, [_case(folder, "a")])
    monkeypatch.chdir(tmp_path)
    dataset = load_raw_dataset(Path("rel/manifest.yaml"))
    checked = [check_case(case, dataset.labels, dataset_root(Path("rel/manifest.yaml")))[0] for case in dataset.cases]
    record = IngestRecord.from_checked(dataset, Path("rel/manifest.yaml"), checked, [], SECRET)
    monkeypatch.chdir(tmp_path.parent)
    [case] = record.cases
    assert Path(record.source).is_absolute() and Path(case.image).is_absolute() and Path(case.label).is_absolute()
    assert Path(case.image).is_file() and Path(case.label).is_file()


def test_records_are_owner_only_and_failures_serialize_no_source_path_or_case_id(tmp_path: Path) -> None:
    folder = tmp_path / "private"
    folder.mkdir()
    patient = _case(folder, PATIENT)
    (folder / patient["image"]).write_bytes(b"not a NIfTI file")  # its reader's message quotes the path
    manifest = _manifest(folder, [_case(folder, "good"), patient])
    dataset, problems = verify_dataset(manifest)
    [problem] = problems
    assert problem.file == f"{PATIENT}.nii.gz" and "not a readable NIfTI" in problem.problem
    assert str(folder) not in problem.problem and PATIENT not in problem.problem

    good = [check_case(case, dataset.labels, folder)[0] for case in dataset.cases if case.case_id == "good"]
    raw = tmp_path / "workspace" / "raw"
    path = IngestRecord.from_checked(dataset, manifest, good, problems, SECRET).save(raw)
    assert (_mode(raw), _mode(path)) == (0o700, 0o600)
    assert IngestRecord.load(path).rejected[0].case == PATIENT  # the record keeps the source id and file

    failure = Failure.from_problem(dataset.name, problem, SECRET)
    assert (failure.file, failure.source_case) == (f"{PATIENT}.nii.gz", PATIENT)  # for the CLI's lines
    assert failure.case == keyed_case_id(SECRET, "private", PATIENT)
    stored = failure.model_dump_json()
    assert json.loads(stored) == {"dataset": "private", "case": failure.case, "problem": problem.problem}
    assert PATIENT not in stored and str(folder) not in stored


def test_a_case_that_fails_to_preprocess_is_named_by_dataset_and_pseudonym(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    manifest = _manifest(folder, [_case(folder, PATIENT)])
    dataset = load_raw_dataset(manifest)
    record = IngestRecord.from_checked(
        dataset, manifest, [check_case(dataset.cases[0], {1: "x"}, folder)[0]], [], SECRET
    )
    [case] = record.cases
    Path(case.label).unlink()
    store = TaskStore.open(str(tmp_path / "store.zarr"), 32, create=True)
    with pytest.raises(CaseFailed) as failed:
        preprocess_case_task.fn(store.url, "gone", case, plan_for(record, 32))
    assert str(failed.value) == f"gone case {case.store_id}: label: file not found"
    assert failed.value.__cause__ is None and failed.value.__suppress_context__


def test_the_workspace_and_the_store_are_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("PROMPTSEG_WORKSPACE", "PROMPTSEG_RESOLUTION"):  # prepare exports its settings
        monkeypatch.setenv(variable, os.environ[variable])
    old = os.umask(0o022)  # as a shell leaves it
    try:
        environment.prepare(Settings(workspace=tmp_path / "workspace"))
        store = TaskStore.open(str(tmp_path / "workspace" / "store.zarr"), 32, create=True)
        store.write_case("d", "k", 2, np.zeros((1, 32, 32)), np.zeros((1, 32, 32)), [0])
        (tmp_path / "workspace" / "mlflow.db").write_bytes(b"")  # as any library creates its files
    finally:
        os.umask(old)
    assert _mode(tmp_path / "workspace") == 0o700
    for path in (tmp_path / "workspace").rglob("*"):
        assert _mode(path) & 0o077 == 0, (path, oct(_mode(path)))
