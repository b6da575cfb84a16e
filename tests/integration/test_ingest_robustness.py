"""Bad input never stops a run nor reaches the store; killed runs, re-runs, changed cases; no patient identifiers.

The malformed corpus holds one case per kind of damage next to good cases; ingest must report each bad case with
its file (relative to the dataset root) and reason, and every good case must still land; so must the sources after
a bad one. What Prefect stores names cases by dataset and pseudonym only; the CLI names the files.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler
from pydantic import SecretStr
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.flows import ingest_flow, preprocess_flow
from storage.ingest_record import Failure, IngestRecord
from storage.preprocess import plan_for, preprocess_case
from storage.reports import IngestedDataset
from storage.synthetic import CENTERS, write_png_dataset, write_synthetic_datasets
from storage.task_store import TaskStore

SHAPE = (24, 24, 12)


def _image() -> np.ndarray:
    return np.random.default_rng(0).normal(100, 10, SHAPE).astype(np.float32)


def _label() -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[6:14, 8:16, 3:9] = 1
    return label


def _nifti(path: Path, data: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 2.0)) -> None:
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), path)


def _with_pixdim(path: Path, data: np.ndarray, pixdim: tuple[float, float, float]) -> None:
    image = nib.Nifti1Image(data, np.eye(4))
    image.header["pixdim"][1:4] = pixdim
    nib.save(image, path)


def _shifted(path: Path, data: np.ndarray) -> None:
    """Same grid and spacing as `_nifti`, but the origin moved by 30 mm: the label does not overlay the image."""
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[:3, 3] = [30.0, 0.0, 0.0]
    nib.save(nib.Nifti1Image(data, affine), path)


def _huge_header(path: Path) -> None:
    header = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)).header.copy()
    header.set_data_shape((3000, 3000, 3000))
    with gzip.open(path, "wb") as handle:
        handle.write(header.binaryblock + b"\0" * 4 + np.zeros(8, np.int16).tobytes())


def _truncated(path: Path) -> None:
    _nifti(path, _image())
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


# kind → (writes the image file, writes the label file, expected reason, file blamed)
CORPUS: dict[str, tuple[Callable[[Path], None], Callable[[Path], None], str, str]] = {
    "garbage": (
        lambda p: p.write_bytes(b"this is not an image"),
        lambda p: _nifti(p, _label()),
        "not a readable NIfTI",
        "image",
    ),
    "truncated": (_truncated, lambda p: _nifti(p, _label()), "not a readable NIfTI", "image"),
    "nan": (
        lambda p: _nifti(p, np.where(_label() > 0, np.nan, _image()).astype(np.float32)),
        lambda p: _nifti(p, _label()),
        "NaN",
        "image",
    ),
    "inf": (
        lambda p: _nifti(p, np.where(_label() > 0, np.inf, _image()).astype(np.float32)),
        lambda p: _nifti(p, _label()),
        "infinite",
        "image",
    ),
    "shape-mismatch": (lambda p: _nifti(p, _image()), lambda p: _nifti(p, _label()[:20]), "label shape", "label"),
    "spacing-mismatch": (
        lambda p: _nifti(p, _image()),
        lambda p: _nifti(p, _label(), (1.0, 1.0, 5.0)),
        "label spacing",
        "label",
    ),
    "affine-mismatch": (lambda p: _nifti(p, _image()), lambda p: _shifted(p, _label()), "affine", "label"),
    "unknown-label": (lambda p: _nifti(p, _image()), lambda p: _nifti(p, _label() * 7), "not declared", "label"),
    "empty-label": (lambda p: _nifti(p, _image()), lambda p: _nifti(p, np.zeros(SHAPE, np.uint8)), "empty", "label"),
    "zero-spacing": (
        lambda p: _with_pixdim(p, _image(), (1.0, 0.0, 1.0)),
        lambda p: _nifti(p, _label()),
        "spacing",
        "image",
    ),
    "negative-spacing": (
        lambda p: _with_pixdim(p, _image(), (1.0, -2.0, 1.0)),
        lambda p: _nifti(p, _label()),
        "spacing",
        "image",
    ),
    "implausible-spacing": (
        lambda p: _nifti(p, _image(), (1.0, 1.0, 400.0)),
        lambda p: _nifti(p, _label(), (1.0, 1.0, 400.0)),
        "implausible spacing",
        "image",
    ),
    "absurd-header": (_huge_header, lambda p: _nifti(p, _label()), "absurd size", "image"),
    "missing-label": (lambda p: _nifti(p, _image()), lambda p: None, "file not found", "label"),
    "two-dimensional": (lambda p: _nifti(p, _image()[:, :, 0]), lambda p: _nifti(p, _label()), "3D", "image"),
    "symlink-loop": (lambda p: p.symlink_to(p), lambda p: _nifti(p, _label()), "symbolic link loop", "image"),
    "fractional-label": (
        lambda p: _nifti(p, _image()),
        lambda p: _nifti(p, _label() * np.float32(1.5)),
        "fractional values (1.5)",
        "label",
    ),
}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "cases").mkdir(parents=True)
    cases = []
    for kind in [*CORPUS, "good-1", "good-2"]:
        image, label = root / "cases" / f"{kind}.nii.gz", root / "cases" / f"{kind}_seg.nii.gz"
        if kind in CORPUS:
            CORPUS[kind][0](image)
            CORPUS[kind][1](label)
        else:
            _nifti(image, _image())
            _nifti(label, _label())
        cases.append({"id": kind, "image": f"cases/{image.name}", "label": f"cases/{label.name}"})
    manifest = {"dataset": "corpus", "center": "lab", "modality": "MR", "labels": {1: "organ"}, "cases": cases}
    (root / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return root / "manifest.yaml"


def test_every_kind_of_bad_case_is_reported_and_good_cases_land(
    prefect_harness: None, corpus: Path, tmp_path: Path
) -> None:
    assert len(CORPUS) >= 12
    report = ingest_flow([str(corpus)], str(tmp_path / "raw"), str(tmp_path / "secret.key"))
    assert report.datasets == [
        IngestedDataset(dataset="corpus", center="lab", modality="MR", cases=2, rejected=len(CORPUS))
    ]
    by_case: dict[str, list[Failure]] = {}
    for failure in report.failures:
        by_case.setdefault(failure.source_case, []).append(failure)
    assert set(by_case) == set(CORPUS)
    for kind, (_, _, reason, blamed) in CORPUS.items():
        suffix = "_seg.nii.gz" if blamed == "label" else ".nii.gz"
        assert any(reason in f.problem and f.file == f"cases/{kind}{suffix}" for f in by_case[kind]), (
            kind,
            by_case[kind],
        )
    record = IngestRecord.load(tmp_path / "raw" / "corpus.json")
    assert [case.case for case in record.cases] == ["good-1", "good-2"]
    # the record keeps why each bad case was left out, by source case id and file
    assert [(r.case, r.file, r.problem) for r in record.rejected] == [
        (f.source_case, f.file, f.problem) for f in report.failures
    ]
    summary = preprocess_flow(str(tmp_path / "raw"), str(tmp_path / "store.zarr"), 32)
    assert summary.datasets[0].cases == 2 and not summary.failures


def test_verify_prints_every_problem_with_its_file(corpus: Path) -> None:
    result = CliRunner().invoke(app, ["verify", str(corpus)])
    assert result.exit_code == 1
    problems = json.loads(result.output)["corpus"]
    assert {p["case"] for p in problems} == set(CORPUS)
    assert {"case": "nan", "file": "cases/nan.nii.gz", "problem": "contains NaN or infinite values"} in problems


def test_killed_run_is_invisible_and_the_next_run_completes_it(prefect_harness: None, tmp_path: Path) -> None:
    [source] = [write_synthetic_datasets(tmp_path / "src", n_cases=3, seed=3)[0]]
    raw, url = tmp_path / "raw", str(tmp_path / "store.zarr")
    ingest_flow([str(source)], str(raw), str(tmp_path / "secret.key"))
    record = IngestRecord.load(raw / "synth-center-a.json")
    store = TaskStore.open(url, 32, create=True)
    preprocess_case(store, record.dataset, record.cases[0], plan_for(record, 32))  # then the run "dies"
    assert TaskStore.open(url, 32).datasets() == []  # nothing half-written is visible
    report = preprocess_flow(str(raw), url, 32)
    assert report.datasets[0].cases == 3
    assert TaskStore.open(url, 32).datasets() == ["synth-center-a"]


def test_changed_case_makes_a_new_version(prefect_harness: None, tmp_path: Path) -> None:
    source = write_synthetic_datasets(tmp_path / "src", n_cases=2, seed=4)[0]
    raw, url, secret = tmp_path / "raw", str(tmp_path / "store.zarr"), str(tmp_path / "secret.key")
    ingest_flow([str(source)], str(raw), secret)
    first = preprocess_flow(str(raw), url, 32).datasets[0].version
    label_path = source / "labelsTr" / "center-a_001.nii.gz"
    label = nib.load(label_path)
    data = np.asarray(label.dataobj).copy()
    data[data == 4] = 1  # the lesions disappear from one case
    nib.save(nib.Nifti1Image(data, label.affine), label_path)
    ingest_flow([str(source)], str(raw), secret)
    second = preprocess_flow(str(raw), url, 32).datasets[0].version
    store = TaskStore.open(url, 32)
    assert second != first and store.current_version("synth-center-a") == second
    assert store.has_complete_version("synth-center-a", first)


def test_two_dimensional_images_and_a_ct_window(prefect_harness: None, tmp_path: Path) -> None:
    """PNG slices are sliced along their one plane only; a configured CT window replaces the percentiles."""
    png = write_png_dataset(tmp_path / "src", CENTERS[0], n_cases=3, seed=6)
    ct = write_synthetic_datasets(tmp_path / "src", n_cases=2, seed=6)[0]
    raw, url = tmp_path / "raw", str(tmp_path / "store.zarr")
    ingest_flow([str(png), str(ct)], str(raw), str(tmp_path / "secret.key"))
    preprocess_flow(str(raw), url, 32, ct_window=[-160, 240])
    store = TaskStore.open(url, 32)
    assert {t.axis for t in store.tasks() if t.dataset.endswith("-png")} == {2}
    assert {t.axis for t in store.tasks() if t.dataset == "synth-center-a"} == {0, 1, 2}
    normalization = store.version_info("synth-center-a")["normalization"]
    assert (normalization["low"], normalization["high"]) == (-160.0, 240.0)


def test_patient_identifiers_reach_neither_store_nor_records_nor_artifacts(
    prefect_harness: None, tmp_path: Path
) -> None:
    sources = write_synthetic_datasets(
        tmp_path / "src", n_cases=2, seed=5, patient_name="DOE^JANE", patient_id="MRN-0042"
    )
    dicom = next(s for s in sources if "center-c" in str(s))
    raw, url = tmp_path / "raw", tmp_path / "store.zarr"
    ingest = ingest_flow([str(dicom)], str(raw), str(tmp_path / "secret.key"))
    report = preprocess_flow(str(raw), str(url), 32)
    assert report.datasets[0].cases == 2
    with get_client(sync_client=True) as client:
        artifacts = json.dumps([a.data for a in client.read_artifacts()])
        logs = json.dumps([log.message for log in client.read_logs()])
    texts = [ingest.model_dump_json(), report.model_dump_json(), artifacts, logs]
    texts += [p.read_text(errors="ignore") for p in raw.rglob("*.json")]
    blobs = [p.read_bytes() for p in url.rglob("*") if p.is_file()]
    for secret in ("DOE", "JANE", "MRN-0042"):
        assert not any(secret in text for text in texts), secret
        assert not any(secret.encode() in blob for blob in blobs), secret


def _small_manifest(folder: Path, dataset: str, cases: dict[str, dict[str, str]]) -> Path:
    """A manifest of `cases` (id → entry without its id) in `folder`, with a good image (its own pixels: cases are
    content-addressed) and label per named file."""
    folder.mkdir(parents=True, exist_ok=True)
    for offset, entry in enumerate(cases.values()):
        for key, name in entry.items():
            if not (folder / name).exists():
                _nifti(folder / name, _image() + 10 * offset if key == "image" else _label())
    entries = [{"id": case, **entry} for case, entry in cases.items()]
    meta = {"dataset": dataset, "modality": "MR", "labels": {1: "organ"}, "cases": entries}
    (folder / "manifest.yaml").write_text(yaml.safe_dump(meta))
    return folder / "manifest.yaml"


def test_a_bad_source_or_case_does_not_stop_the_sources_after_it(prefect_harness: None, tmp_path: Path) -> None:
    """Shared case ids, a case without its label, a symbolic link loop, a source that does not exist and one that
    repeats a dataset name are each reported; the good cases of every dataset land."""
    first = _small_manifest(tmp_path / "first", "first", {"a": {"image": "a.nii.gz", "label": "a_seg.nii.gz"}})
    meta = yaml.safe_load(first.read_text())
    _nifti(tmp_path / "first" / "b2.nii.gz", _image())
    (tmp_path / "first" / "loop.nii.gz").symlink_to(tmp_path / "first" / "loop.nii.gz")
    meta["cases"] += [
        {"id": "b", "image": "a.nii.gz", "label": "a_seg.nii.gz"},
        {"id": "b", "image": "b2.nii.gz", "label": "a_seg.nii.gz"},  # the same id again: the two would merge
        {"id": "c", "image": "a.nii.gz"},
        {"id": "d", "image": "loop.nii.gz", "label": "a_seg.nii.gz"},
    ]
    first.write_text(yaml.safe_dump(meta))
    again = _small_manifest(tmp_path / "again", "first", {"z": {"image": "z.nii.gz", "label": "z_seg.nii.gz"}})
    last = _small_manifest(tmp_path / "last", "last", {"y": {"image": "y.nii.gz", "label": "y_seg.nii.gz"}})
    sources = [first, tmp_path / "vanished", again, last]
    report = ingest_flow([str(source) for source in sources], str(tmp_path / "raw"), str(tmp_path / "secret.key"))
    assert [(row.dataset, row.cases, row.rejected) for row in report.datasets] == [("first", 1, 4), ("last", 1, 0)]
    failures = {(f.dataset if f.case else None, f.source_case, f.file): f.problem for f in report.failures}
    assert failures.keys() == {
        ("first", "b", "a.nii.gz"),
        ("first", "b", "b2.nii.gz"),
        ("first", "c", "manifest.yaml"),
        ("first", "d", "loop.nii.gz"),
        (None, None, str(tmp_path / "vanished")),  # named by the source's pseudonym
        (None, None, str(again)),  # dataset "first" again
    }
    assert "dataset 'first'" in failures[None, None, str(again)]
    assert failures["first", "c", "manifest.yaml"] == "case 4 has no 'label'"
    assert "symbolic link loop" in failures["first", "d", "loop.nii.gz"]
    assert "ids must be unique" in failures["first", "b", "b2.nii.gz"]
    records = {path.name: IngestRecord.load(path) for path in (tmp_path / "raw").glob("*.json")}
    assert {name: [case.case for case in r.cases] for name, r in records.items()} == {
        "first.json": ["a"],
        "last.json": ["y"],
    }


PATIENT = "MRN-0042"  # a seeded patient ID used as a case id and a file name


def test_prefect_stores_pseudonyms_not_source_paths_or_case_ids(prefect_harness: None, tmp_path: Path) -> None:
    sources_folder = tmp_path / "sources"  # the workspace's own paths are in the flows' parameters: not these
    folder = sources_folder / "hospital"
    manifest = _small_manifest(
        folder,
        "hospital",
        {
            PATIENT: {"image": f"{PATIENT}.nii.gz", "label": f"{PATIENT}_seg.nii.gz"},
            "other": {"image": "other.nii.gz", "label": "other_seg.nii.gz"},
            f"{PATIENT}-2": {"image": f"{PATIENT}-2.nii.gz", "label": f"{PATIENT}_seg.nii.gz"},
        },
    )
    (folder / f"{PATIENT}-2.nii.gz").write_bytes(b"not a NIfTI file")  # nibabel's message quotes its path
    raw, url = tmp_path / "raw", str(tmp_path / "store.zarr")
    vanished = sources_folder / f"{PATIENT}-vanished"
    sources = [SecretStr(str(manifest)), SecretStr(str(vanished))]  # as the CLI passes them
    ingested = ingest_flow(sources, str(raw), str(tmp_path / "secret.key"), return_state=True)
    assert {f.file for f in ingested.result().failures} == {f"{PATIENT}-2.nii.gz", str(vanished)}  # for the CLI
    record = IngestRecord.load(raw / "hospital.json")
    assert oct(os.stat(raw / "hospital.json").st_mode & 0o777) == oct(0o600)
    other = next(case for case in record.cases if case.case == "other")
    Path(other.label).unlink()  # the case fails in preprocess
    preprocessed = preprocess_flow(str(raw), url, 32, return_state=True)
    [failure] = preprocessed.result().failures
    assert (failure.case, failure.problem, failure.file) == (other.store_id, "label: file not found", other.label)

    runs = [ingested.state_details.flow_run_id, preprocessed.state_details.flow_run_id]
    APILogHandler().flush()  # the log lines sent in batches reach the API before they are read
    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=runs)))
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=runs)))
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=runs)))
        artifacts = [a for a in client.read_artifacts() if a.flow_run_id in runs]
    assert any("CaseFailed" in log.message for log in logs)  # the failing task's log lines are among them
    [ingest_run] = [run for run in flow_runs if run.id == runs[0]]
    assert ingest_run.parameters["sources"] == ["**********"] * 2  # secret parameters, stored masked
    stored = json.dumps(
        [run.parameters for run in flow_runs]
        + [run.state.message for run in flow_runs + task_runs]
        + [run.name for run in task_runs]
        + [log.message for log in logs]
        + [artifact.data for artifact in artifacts],
        default=str,
    )
    assert PATIENT not in stored and str(sources_folder) not in stored
    assert f"hospital case {other.store_id}: label: file not found" in stored  # dataset and pseudonym name it


def test_preprocess_from_another_folder_writes_every_case_and_exits_1_naming_the_file_that_failed(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records hold absolute paths, so a relative source ingested in one folder is preprocessed from any other; a
    case whose file went away since is left out with its real reason, named with its file, and the exit code is 1."""
    for variable in ("PROMPTSEG_WORKSPACE", "PROMPTSEG_RESOLUTION"):  # a command exports its settings
        monkeypatch.setenv(variable, os.environ[variable])
    monkeypatch.setenv("PROMPTSEG_DASK_WORKERS", "1")
    sources = tmp_path / "sources"
    _small_manifest(sources / "here", "here", {"a": {"image": "a.nii.gz", "label": "a_seg.nii.gz"}})
    _small_manifest(
        sources / "gone",
        "gone",
        {"b": {"image": "b.nii.gz", "label": "b_seg.nii.gz"}, "c": {"image": "c.nii.gz", "label": "c_seg.nii.gz"}},
    )
    workspace = ["--workspace", str(tmp_path / "workspace"), "--resolution", "32"]
    monkeypatch.chdir(sources)
    ingested = CliRunner().invoke(app, [*workspace, "ingest", "here/manifest.yaml", "gone/manifest.yaml"])
    assert ingested.exit_code == 0, ingested.output
    (sources / "gone" / "c.nii.gz").unlink()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [*workspace, "preprocess"])
    assert result.exit_code == 1, result.output
    assert {row["dataset"]: row["cases"] for row in json.loads(result.stdout)["datasets"]} == {"gone": 1, "here": 1}
    assert f"gone {sources / 'gone' / 'c.nii.gz'}: image: file not found" in result.stderr
    assert "1 case(s) could not be written and were left out" in result.stderr
