"""`promptseg propagate` and `promptseg predict`: an annotated scan completed, and a folder of scans segmented.

Propagation reads the scan and its label volume (NIfTI, a DICOM series folder or zip, or a DICOM SEG of the series)
and segments every other slice along one axis against the labelled slices (promptseg.inference.propagation): in
this process with a registered version, or through the endpoint (the annotated volume registered as a task, then
the scan segmented against it at its own spacing). Either way the user's slices keep their labels, and the result
is written on the scan's grid: NIfTI for NIfTI, DICOM SEG for DICOM, with an overlay PNG of a propagated slice.

`predict_folder` segments every scan of a folder (NIfTI files, DICOM series folders or zips) against one task
through the endpoint, like `nnUNetv2_predict -i IN -o OUT`: one label volume per scan, and a scan that fails is
reported without stopping the others.
"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import numpy as np

from promptseg.evaluation.report_files import overlay_png
from promptseg.inference.errors import InvalidInput
from promptseg.inference.predictor import Predictor, intensity_recipe
from promptseg.inference.propagation import keep_annotated, label_values, propagate
from promptseg.inference.volume_io import Volume, dicom_seg_bytes, nifti_bytes, read_label_upload, read_volume
from promptseg.serving.api_models import SegmentRequest, VolumeTaskRequest
from promptseg.serving.client import APIError, PromptSegClient, volume_upload
from storage.harmonize import NormalizationParams, normalize_intensity, volume_slices

PROGRESS = logging.getLogger("promptseg.progress")
SCAN_SUFFIXES = (".nii", ".nii.gz", ".zip")
DISPLAY = NormalizationParams("display")  # overlays: each slice's own percentiles


def _annotated_scan(image: Path, label: Path, request: VolumeTaskRequest) -> tuple[Volume, np.ndarray, list[int], int]:
    """The scan, its RAS label volume, the label values to propagate and the RAS axis to propagate along."""
    volume = read_volume(image.name, volume_upload(image)[1])
    labels = read_label_upload(label.name, volume_upload(label)[1], volume)
    axis = volume.default_axis if request.axis is None else request.axis
    return volume, labels, label_values(labels, request.labels), axis


def _stem(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii").removesuffix(".zip")


def write_result(
    volume: Volume, labels_ras: np.ndarray, names: dict[int, str], axis: int, out: Path, stem: str, title: str
) -> dict:
    """The label volume on the scan's grid (NIfTI or DICOM SEG) and an overlay of its most covered slice."""
    out.mkdir(parents=True, exist_ok=True)
    stored = volume.scan.in_stored_order(labels_ras)
    if volume.kind == "dicom":
        path = out / f"{stem}_seg.dcm"
        path.write_bytes(dicom_seg_bytes(stored, volume, names, "promptseg", title))
    else:
        path = out / f"{stem}_labels.nii.gz"
        path.write_bytes(nifti_bytes(stored, volume))
    slices = volume_slices(labels_ras, axis)
    index = int(np.argmax(slices.reshape(len(slices), -1).astype(bool).sum(1)))
    image = normalize_intensity(volume_slices(volume.scan.array, axis)[index], DISPLAY)
    overlay = out / f"{stem}_overlay.png"
    overlay_png(image.T, None, slices[index].T > 0, overlay, f"{stem} axis {axis} slice {index} ({title})")
    fractions = {str(v): float((labels_ras == v).mean()) for v in names}
    return {"labels": str(path), "overlay": str(overlay), "axis": axis, "foreground_fraction": fractions}


def propagate_in_process(
    predictor: Predictor,
    model_card: dict,
    image: Path,
    label: Path,
    out: Path,
    request: VolumeTaskRequest,
    title: str,
    largest_component: bool = False,
) -> dict:
    """Complete the annotated scan with a loaded version in this process."""
    volume, labels, values, axis = _annotated_scan(image, label, request)
    window = (model_card.get("preparation") or {}).get("ct_window")
    intensity = intensity_recipe(request.modality, request.window, volume_modality=volume.modality, model_window=window)
    PROGRESS.info("propagate %s along axis %d: %d slices", image.name, axis, volume.scan.array.shape[axis])
    annotated = request.annotated or ()
    result = propagate(
        predictor, volume.scan, labels, values, axis, intensity, annotated, largest_component=largest_component
    )
    return write_result(volume, result, request.structure_names(values), axis, out, _stem(image), title)


def propagate_via_endpoint(
    client: PromptSegClient,
    image: Path,
    label: Path,
    out: Path,
    request: VolumeTaskRequest,
    largest_component: bool = False,
) -> dict:
    """Complete the annotated scan through the endpoint: register it as a task, segment the scan against it."""
    volume, labels, values, axis = _annotated_scan(image, label, request)
    request = request.model_copy(update={"labels": values})
    task = client.create_task_from_volume(image, label, request.model_copy(update={"axis": axis}))
    PROGRESS.info("propagate %s along axis %d through task %s", image.name, axis, task.task_id)
    segment = SegmentRequest(
        axis=axis,
        target_spacing=volume.scan.spacing,
        volume_format="npy",
        labels=values,
        largest_component=largest_component,
    )
    response = client.segment_volume(image, task.task_id, request=segment)
    stored = _label_array(response.volume.volume_base64)
    result = keep_annotated(volume.scan.in_ras_order(stored), labels, values, axis, request.annotated or ())
    names = {int(value): name for value, name in task.names.items()}
    written = write_result(volume, result, names, axis, out, _stem(image), f"model v{response.model_version}")
    return {"task_id": task.task_id, **written}


def _label_array(encoded: str) -> np.ndarray:
    """A label volume returned as base64 NPY."""
    return np.load(io.BytesIO(base64.b64decode(encoded)), allow_pickle=False)


def _overlay_axis(axis: int | None) -> int:
    """The axis a result's overlay is cut along: the one segmented, or the axial one after fusing all three."""
    return 2 if axis is None else axis


def scans_in(folder: Path) -> list[Path]:
    """The scans of a folder: NIfTI files, zips and DICOM series folders, by name."""
    found = [p for p in sorted(Path(folder).iterdir()) if p.is_dir() or p.name.lower().endswith(SCAN_SUFFIXES)]
    if not found:
        raise InvalidInput(str(folder), "no scans here (NIfTI files, DICOM series folders or zips)")
    return found


def predict_folder(client: PromptSegClient, folder: Path, out: Path, request: SegmentRequest) -> dict:
    """Every scan of `folder` segmented against the request's task; one label volume per scan in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    scans = scans_in(folder)
    names = {int(value): name for value, name in client.get_task(request.task_id).names.items()}
    request = request.model_copy(update={"volume_format": "npy"})
    for number, scan in enumerate(scans, start=1):
        PROGRESS.info("predict %d/%d %s", number, len(scans), scan.name)
        try:
            volume = read_volume(scan.name, volume_upload(scan)[1])
            response = client.segment_volume(scan, request.task_id, request=request)
        except (InvalidInput, APIError) as error:
            failed.append({"scan": scan.name, "problem": str(error)})
            continue
        stored = _label_array(response.volume.volume_base64)
        wanted = {value: names.get(value, f"label {value}") for value in response.labels}
        axis = _overlay_axis(response.volume.axis)
        title = f"model v{response.model_version}"
        result = write_result(volume, volume.scan.in_ras_order(stored), wanted, axis, out, _stem(scan), title)
        written.append({"scan": scan.name, **result})
    return {"written": written, "failed": failed}
