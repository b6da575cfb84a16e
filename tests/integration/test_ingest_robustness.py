"""Bad input never stops a run nor reaches the store; killed runs, re-runs, changed cases; no patient identifiers.

The malformed corpus holds one case per kind of damage next to good cases; ingest must report each bad case with
its file (relative to the dataset root) and reason, and every good case must still land.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from prefect.client.orchestration import get_client
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
        by_case.setdefault(failure.case, []).append(failure)
    assert set(by_case) == set(CORPUS)
    for kind, (_, _, reason, blamed) in CORPUS.items():
        suffix = "_seg.nii.gz" if blamed == "label" else ".nii.gz"
        assert any(reason in f.problem and f.file == f"cases/{kind}{suffix}" for f in by_case[kind]), (
            kind,
            by_case[kind],
        )
    record = IngestRecord.load(tmp_path / "raw" / "corpus.json")
    assert [case.case for case in record.cases] == ["good-1", "good-2"]
    assert record.rejected == report.failures  # the record keeps why each bad case was left out
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
