"""Prompts from annotated volumes over real HTTP: `promptseg propagate` completes the sample CT from three labelled
slices through the endpoint and in process alike; a task cut from a DICOM series and a DICOM SEG label volume
segments the series into a DICOM SEG coded as an AI result with the structure's name and SNOMED code; `promptseg
predict` turns a folder of scans into a folder of label volumes, reporting a bad scan without stopping."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.settings import Settings
from promptseg.inference.volume_io import dicom_seg_bytes, read_label_volume, read_volume
from promptseg.serving.api_models import SegmentRequest, VolumeTaskRequest
from promptseg.serving.client import APIError, PromptSegClient, volume_upload
from storage.readers import read_volume as read_scan
from storage.synthetic import CENTERS, LABELS, write_center_dataset

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "samples" / "ct-abdomen-61"
SPLEEN = 1


def _run(settings: Settings, *arguments: str) -> dict:
    result = CliRunner().invoke(app, ["--workspace", str(settings.root), *arguments])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{") :])


@pytest.fixture(scope="module")
def three_slices(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """The sample CT's spleen labelled on three axial slices only."""
    label = nib.load(SAMPLE / "label.nii.gz")
    full = np.asarray(label.dataobj)
    holding = [k for k in range(full.shape[2]) if (full[..., k] == SPLEEN).sum() > 30]
    chosen = [holding[len(holding) // 4], holding[len(holding) // 2], holding[3 * len(holding) // 4]]
    sparse = np.zeros(full.shape, np.uint8)
    for k in chosen:
        sparse[..., k] = (full[..., k] == SPLEEN).astype(np.uint8)
    path = tmp_path_factory.mktemp("propagate") / "three_slices.nii.gz"
    nib.save(nib.Nifti1Image(sparse, label.affine), path)
    return path, chosen


def test_propagate_completes_the_sample_ct_the_same_through_the_endpoint_and_in_process(
    settings: Settings, served: str, three_slices: tuple[Path, list[int]], tmp_path: Path
) -> None:
    label_path, chosen = three_slices
    common = ["--image", str(SAMPLE / "image.nii.gz"), "--label", str(label_path), "--names", "spleen"]
    common += ["--largest-component"]
    via_endpoint = _run(settings, "propagate", *common, "--via", "endpoint", "--out", str(tmp_path / "endpoint"))
    in_process = _run(settings, "propagate", *common, "--via", "process", "--out", str(tmp_path / "process"))

    image = nib.load(SAMPLE / "image.nii.gz")
    results = [np.asarray(nib.load(report["labels"]).dataobj) for report in (via_endpoint, in_process)]
    sparse = np.asarray(nib.load(label_path).dataobj)
    truth = np.asarray(nib.load(SAMPLE / "label.nii.gz").dataobj) == SPLEEN
    for result in results:
        assert result.shape == image.shape and set(np.unique(result)) <= {0, SPLEEN}
        for k in chosen:  # the user's slices come back as given
            np.testing.assert_array_equal(result[..., k], sparse[..., k])
        others = [k for k in range(image.shape[2]) if k not in chosen]
        assert result[..., others].any()  # the rest was segmented, not copied
    assert np.mean(results[0] == results[1]) > 0.999  # one preparation path, wherever it runs
    assert Path(via_endpoint["overlay"]).stat().st_size > 1000 and via_endpoint["axis"] == 2
    with PromptSegClient(served) as client:
        task = client.get_task(via_endpoint["task_id"])
    assert task.names == {"1": "spleen"} and task.n_prompts == 3 and task.window is not None
    dice = 2 * (results[0].astype(bool) & truth).sum() / (results[0].astype(bool).sum() + truth.sum())
    print(f"propagated spleen Dice on the sample CT (session model, 3 labelled slices): {dice:.3f}")


def test_a_task_cut_from_a_dicom_seg_gives_a_coded_dicom_seg(served: str, tmp_path: Path) -> None:
    source = write_center_dataset(tmp_path, CENTERS[2], 1, seed=11)
    series = source.parent / "imagesTr" / "center-c_000"
    volume = read_volume(series.name, volume_upload(series)[1])
    liver = read_scan(source.parent / "labelsTr" / "center-c_000.seg.nrrd").array == LABELS["liver"]
    seg_path = tmp_path / "liver_seg.dcm"
    stored = volume.scan.in_stored_order(liver.astype(np.uint8) * LABELS["liver"])
    seg_path.write_bytes(dicom_seg_bytes(stored, volume, {LABELS["liver"]: "liver"}, "annotator", "1"))

    with PromptSegClient(served) as client:
        request = VolumeTaskRequest(labels=[LABELS["liver"]], names=["liver"])
        task = client.create_task_from_volume(series, seg_path, request)
        response = client.segment_volume(series, task.task_id, request=SegmentRequest(largest_component=True))
    assert task.names == {str(LABELS["liver"]): "liver"} and task.modality == "MR"
    data = base64.b64decode(response.volume.volume_base64)
    seg = pydicom.dcmread(io.BytesIO(data))
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "liver"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SNOMED CT Liver
    family = segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmFamilyCodeSequence[0]
    assert (family.CodeValue, family.CodingSchemeDesignator) == ("123110", "DCM")  # Artificial Intelligence
    labels = read_label_volume(data, "dicom-seg", volume)
    assert labels.shape == volume.array.shape and set(np.unique(labels)) <= {0, LABELS["liver"]}
    assert ndimage.label(labels > 0, np.ones((3, 3, 3)))[1] <= 1  # the largest 3D component only


def test_predict_segments_a_folder_and_reports_a_bad_scan(
    settings: Settings, served: str, three_slices: tuple[Path, list[int]], tmp_path: Path
) -> None:
    label_path, _ = three_slices
    with PromptSegClient(served) as client:
        task = client.create_task_from_volume(SAMPLE / "image.nii.gz", label_path, VolumeTaskRequest(names=["spleen"]))
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.nii.gz").write_bytes((SAMPLE / "image.nii.gz").read_bytes())
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b not a volume")
    result = CliRunner().invoke(
        app,
        [
            "--workspace",
            str(settings.root),
            "predict",
            "-i",
            str(inputs),
            "-o",
            str(tmp_path / "out"),
            "--task",
            task.task_id,
        ],
    )
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert [w["scan"] for w in report["written"]] == ["a.nii.gz"]
    assert [f["scan"] for f in report["failed"]] == ["broken.nii.gz"] and "broken.nii.gz" in report["failed"][0][
        "problem"
    ]
    written = nib.load(report["written"][0]["labels"])
    assert written.shape == nib.load(SAMPLE / "image.nii.gz").shape


@pytest.fixture(scope="module")
def around_the_spleen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sample CT and its labels cropped to the spleen's box and 8 voxels around it (same affine frame)."""
    label = nib.load(SAMPLE / "label.nii.gz")
    found = np.argwhere(np.asarray(label.dataobj) == SPLEEN)
    box = tuple(slice(max(low - 8, 0), high + 9) for low, high in zip(found.min(0), found.max(0), strict=True))
    folder = tmp_path_factory.mktemp("spleen")
    for name, volume in (("image", nib.load(SAMPLE / "image.nii.gz")), ("label", label)):
        nib.save(volume.slicer[box], folder / f"{name}.nii.gz")
    return folder / "image.nii.gz", folder / "label.nii.gz"


def test_a_task_with_prompts_on_every_axis_segments_a_volume_with_the_axes_fused(
    served: str, around_the_spleen: tuple[Path, Path]
) -> None:
    image, label = around_the_spleen
    with PromptSegClient(served) as client:
        task = client.create_task_from_volume(
            image, label, VolumeTaskRequest(labels=[SPLEEN], names=["spleen"], all_axes=True)
        )
        spacing = tuple(float(s) for s in nib.load(image).header.get_zooms())
        fused = client.segment_volume(
            image, task.task_id, request=SegmentRequest(fuse_axes=True, target_spacing=spacing)
        )
        single = client.segment_volume(image, task.task_id, request=SegmentRequest(axis=2, target_spacing=spacing))
        with pytest.raises(APIError) as refused:
            client.segment_volume(image, single_axis_task(client, image, label), request=SegmentRequest(fuse_axes=True))
    assert task.axes == [0, 1, 2] and task.n_prompts > 3
    shape = nib.load(image).shape
    assert fused.volume.axis is None and fused.volume.n_slices == sum(shape)  # every slice of every axis
    assert single.volume.axis == 2 and single.volume.n_slices == shape[2]
    assert fused.volume.shape == list(shape) and fused.volume.foreground_fraction[str(SPLEEN)] > 0
    assert refused.value.status == 422 and refused.value.file == "fuse_axes"


def single_axis_task(client: PromptSegClient, image: Path, label: Path) -> str:
    return client.create_task_from_volume(image, label, VolumeTaskRequest(labels=[SPLEEN])).task_id
