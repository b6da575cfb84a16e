"""3D volumes over real HTTP: a NIfTI volume and a zipped DICOM series segmented slice by slice against a
registered task with several labels; NIfTI and DICOM SEG results on the input's grid; the query CLI; the audit log
keeps no patient data."""

from __future__ import annotations

import base64
import gzip
import io
import json
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.settings import Settings
from promptseg.evaluation.metrics import dice_score
from promptseg.inference.volume_io import read_label_volume, read_volume
from promptseg.serving.client import PromptSegClient, decode_mask, decode_uncertainty, volume_upload
from storage.synthetic import CENTERS, LABELS, write_center_dataset

LIVER, KIDNEY = LABELS["liver"], LABELS["kidney"]


def _case(folder: Path, index: int) -> tuple[np.ndarray, np.ndarray, Path]:
    image = folder / "imagesTr" / f"center-a_{index:03d}_0000.nii.gz"
    label = np.asarray(nib.load(folder / "labelsTr" / f"center-a_{index:03d}.nii.gz").dataobj)
    return np.asarray(nib.load(image).dataobj, np.float32), label, image


@pytest.fixture(scope="module")
def prompts(raw_sources: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Axial slices of two center-a cases holding both liver and kidney, as NPY images and NPY label maps."""
    folder = tmp_path_factory.mktemp("volume-prompts")
    out: dict[str, list[Path]] = {"images": [], "masks": []}
    for case in (0, 1):
        image, label, _ = _case(raw_sources[0], case)
        both = [k for k in range(label.shape[2]) if (label[..., k] == LIVER).any() and (label[..., k] == KIDNEY).any()]
        for k in both[len(both) // 4 :: max(1, len(both) // 3)][:3]:
            out["images"].append(folder / f"c{case}_k{k}.npy")
            out["masks"].append(folder / f"c{case}_k{k}_labels.npy")
            np.save(out["images"][-1], image[..., k])
            np.save(out["masks"][-1], label[..., k].astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def task_id(served: str, prompts: dict[str, list[Path]]) -> str:
    with PromptSegClient(served) as client:
        task = client.create_task(prompts["images"], prompts["masks"], "CT", labels=[LIVER, KIDNEY])
    assert task.labels == [LIVER, KIDNEY] and task.n_prompts == len(prompts["images"]) >= 4
    return task.task_id


def test_a_nifti_volume_comes_back_as_a_label_volume_on_its_grid(
    served: str, raw_sources: list[Path], task_id: str
) -> None:
    image, truth, path = _case(raw_sources[0], 2)
    with PromptSegClient(served) as client:
        response = client.segment_volume(path, task_id, uncertainty=True)
    result = response.volume
    assert result.volume_format == "nifti" and result.axis == 2 and result.shape == list(image.shape)
    assert response.labels == [LIVER, KIDNEY]
    data = base64.b64decode(result.volume_base64)
    labels = read_label_volume(data, "nifti", read_volume(path.name, path.read_bytes()))
    returned = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    assert np.allclose(returned.affine, nib.load(path).affine)  # on the input's grid
    assert set(np.unique(labels)) <= {0, LIVER, KIDNEY}
    assert dice_score(labels == LIVER, truth == LIVER) > 0.6, dice_score(labels == LIVER, truth == LIVER)
    uncertainty = decode_uncertainty(result.uncertainty_npy_base64)
    assert uncertainty.dtype == np.float16 and uncertainty.shape == (2, *image.shape)
    assert float(uncertainty.min()) >= 0 and float(uncertainty.max()) <= 1


def test_several_labels_in_one_call_match_one_call_per_label(
    served: str, prompts: dict[str, list[Path]], raw_sources: list[Path], tmp_path: Path
) -> None:
    image, _, _ = _case(raw_sources[0], 3)
    query = tmp_path / "q.npy"
    np.save(query, image[..., image.shape[2] // 2])
    with PromptSegClient(served) as client:
        both = client.segment(prompts["images"], prompts["masks"], [query], labels=[LIVER, KIDNEY])
        single = {
            value: client.segment(prompts["images"], prompts["masks"], [query], labels=[value])
            for value in (LIVER, KIDNEY)
        }
    label_map = decode_mask(both.masks[0], both.labels)
    assert set(np.unique(label_map)) <= {0, LIVER, KIDNEY} and both.labels == [LIVER, KIDNEY]
    for value, response in single.items():
        alone = decode_mask(response.masks[0], response.labels) == value
        other = decode_mask(single[KIDNEY if value == LIVER else LIVER].masks[0], [KIDNEY + LIVER - value]) > 0
        unambiguous = alone ^ other  # where only this label is above the threshold
        assert np.mean((label_map == value)[unambiguous] == alone[unambiguous]) > 0.999
        assert both.masks[0].foreground_fraction[str(value)] > 0.005


def test_a_zipped_dicom_series_comes_back_as_dicom_seg_and_the_audit_log_holds_no_patient_data(
    settings: Settings, served: str, task_id: str, tmp_path: Path
) -> None:
    source = write_center_dataset(tmp_path, CENTERS[2], 1, seed=7, patient_name="Doe^Jane", patient_id="PID-4711")
    series = source.parent / "imagesTr" / "center-c_000"
    upload = tmp_path / "Doe_Jane_abdomen.zip"  # a file name that would identify the patient
    upload.write_bytes(volume_upload(series)[1])
    with PromptSegClient(served) as client:
        response = client.segment_volume(upload, task_id, modality="MR")
    result = response.volume
    volume = read_volume(upload.name, upload.read_bytes())
    assert result.volume_format == "dicom-seg" and result.axis == volume.default_axis
    assert result.shape == list(volume.array.shape) and volume.array.shape[2] == len(list(series.glob("*.dcm")))
    seg_bytes = base64.b64decode(result.volume_base64)
    segmentation = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(seg_bytes)))
    assert segmentation.number_of_segments == 2
    assert segmentation.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.datasets[0].SeriesInstanceUID
    labels = read_label_volume(seg_bytes, "dicom-seg", volume)
    assert labels.shape == volume.array.shape and set(np.unique(labels)) <= {0, LIVER, KIDNEY}

    audit = "".join(path.read_text() for path in settings.serve.audit_dir.glob("*.jsonl"))
    lines = [json.loads(line) for line in audit.splitlines()]
    assert any(line["request_id"] == response.request_id and line["n_queries"] == result.n_slices for line in lines)
    assert all({"request_id", "route", "status", "duration_ms", "request_bytes"} <= set(line) for line in lines)
    for identifier in ("Doe", "Jane", "PID-4711", "abdomen", ".zip", ".png"):
        assert identifier not in audit


def test_query_cli_segments_a_dicom_folder_against_a_task(
    settings: Settings, served: str, task_id: str, raw_sources: list[Path], tmp_path: Path
) -> None:
    series = raw_sources[2].parent / "imagesTr" / "center-c_000"
    arguments = ["query", "--task", task_id, "--volume", str(series), "--out", str(tmp_path), "--uncertainty"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    seg = pydicom.dcmread(tmp_path / "center-c_000_seg.dcm")
    assert seg.Modality == "SEG" and (tmp_path / "center-c_000_overlay.png").stat().st_size > 1000
    assert np.load(tmp_path / "center-c_000_uncertainty.npy").dtype == np.float16
