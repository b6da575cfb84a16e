"""`promptseg query` (through the HTTP endpoint) and `promptseg segment` (in-process, through the Predictor):
prompt pairs (or a registered task) and 2D queries or a volume (NIfTI, DICOM folder or zip) from files in; mask
files (PNG/NPY, NIfTI, DICOM SEG), overlay PNGs and, when asked, uncertainty maps out. A volume's request and its
answer are lines on the `promptseg.progress` logger, which the CLI prints."""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image

from promptseg.evaluation.report_files import overlay_png
from promptseg.inference.image_io import binary_mask, decode_image, encode_labels
from promptseg.inference.predictor import DEFAULT_MODALITY, DEFAULT_THRESHOLD, Predictor, label_map
from promptseg.inference.volume_io import read_label_volume, read_volume
from promptseg.serving.api_models import MaskResult, SegmentRequest, SegmentResponse, VolumeResult
from promptseg.serving.client import PromptSegClient, decode_mask, decode_uncertainty, volume_upload
from storage.harmonize import NormalizationParams, normalize_intensity

PROGRESS = logging.getLogger("promptseg.progress")


def _write_outputs(
    queries: list[Path], masks: list[np.ndarray], out: Path, modality: str, title: str, mask_format: str = "png"
) -> list[dict]:
    written = []
    for path, mask in zip(queries, masks, strict=True):
        mask_path = out / f"{path.stem}_mask.{mask_format}"
        labels = sorted(int(v) for v in np.unique(mask) if v) or [1]
        mask_path.write_bytes(encode_labels(mask, [1] if mask.max() <= 1 else labels, mask_format))
        image = normalize_intensity(decode_image(path.name, path.read_bytes()), NormalizationParams(modality))
        overlay_path = out / f"{path.stem}_overlay.png"
        overlay_png(image, None, mask > 0, overlay_path, f"{path.name} ({title})")
        written.append(
            {
                "query": str(path),
                "mask": str(mask_path),
                "overlay": str(overlay_path),
                "foreground_fraction": float((mask > 0).mean()),
            }
        )
    return written


def query_files(
    client: PromptSegClient,
    out: Path,
    request: SegmentRequest,
    *,
    prompt_images: list[Path] | None = None,
    prompt_masks: list[Path] | None = None,
    queries: list[Path] | None = None,
    volume: Path | None = None,
    register: bool = False,
) -> dict:
    """Segment 2D queries and/or a volume through the endpoint, against the request's task or prompt pairs
    (registered first as a task with `register`). Writes each query's mask (PNG or NPY, as `mask_format`), an overlay
    PNG and, with `uncertainty`, a float16 NPY map; a volume's label volume (NIfTI `.nii.gz`, DICOM SEG `.dcm` or
    `.npy`) and an overlay of its slice with the most foreground."""
    out.mkdir(parents=True, exist_ok=True)
    modality = request.modality or DEFAULT_MODALITY
    report: dict = {"outputs": []}
    if register:
        task = client.create_task(prompt_images, prompt_masks, modality, request.labels, request.window)
        request = request.model_copy(update={"task_id": task.task_id})
        report["task_id"] = task.task_id
    if request.task_id:
        prompt_images, prompt_masks = None, None  # the task's prompts are the endpoint's
    if queries:
        if request.task_id:
            response = client.segment_task(request.task_id, queries, request)
        else:
            response = client.segment(prompt_images, prompt_masks, queries, request)
        masks = [decode_mask(result, response.labels) for result in response.masks]
        title = f"model v{response.model_version}"
        report["outputs"] += _write_outputs(queries, masks, out, modality, title, response.masks[0].mask_format)
        for output, result in zip(report["outputs"], response.masks, strict=True):
            if result.uncertainty_npy_base64:
                output["uncertainty"] = _write_uncertainty(out / f"{Path(output['query']).stem}", result)
        report |= {"model_version": response.model_version, "request_id": response.request_id}
        report["timings_ms"] = response.timings_ms
    if volume is not None:
        size = sum(path.stat().st_size for path in [volume, *volume.rglob("*")] if path.is_file())
        PROGRESS.info("query: sending %s (%.1f MB) to the endpoint", volume, size / 2**20)
        start = time.monotonic()
        response = client.segment_volume(volume, request.task_id, prompt_images, prompt_masks, request)
        seconds = time.monotonic() - start
        PROGRESS.info("query: %s: %d slices segmented in %.1f s", volume, response.volume.n_slices, seconds)
        report["volume"] = _write_volume(volume, response, out)
        report |= {"model_version": response.model_version, "volume_request_id": response.request_id}
    return report


def _write_uncertainty(stem: Path, result: MaskResult | VolumeResult) -> str:
    path = stem.with_name(f"{stem.name}_uncertainty.npy")
    np.save(path, decode_uncertainty(result.uncertainty_npy_base64))
    return str(path)


def _write_volume(volume: Path, response: SegmentResponse, out: Path) -> dict:
    result = response.volume
    stem = volume.name.removesuffix(".gz").removesuffix(".nii").removesuffix(".zip")
    suffix = {"nifti": "_labels.nii.gz", "dicom-seg": "_seg.dcm", "npy": "_labels.npy"}[result.volume_format]
    path = out / f"{stem}{suffix}"
    path.write_bytes(base64.b64decode(result.volume_base64))
    source = read_volume(volume.name, volume_upload(volume)[1])
    labels = read_label_volume(path.read_bytes(), result.volume_format, source)
    slices = np.moveaxis(labels, result.axis, 0)
    index = int(np.argmax(slices.reshape(len(slices), -1).astype(bool).sum(1)))
    image = normalize_intensity(np.take(source.array, index, axis=result.axis), NormalizationParams("CT"))
    overlay = out / f"{stem}_overlay.png"
    overlay_png(
        image, None, slices[index] > 0, overlay, f"{volume.name} slice {index} (model v{response.model_version})"
    )
    written = {"volume": str(volume), "labels": str(path), "overlay": str(overlay), "shape": result.shape}
    written["foreground_fraction"] = result.foreground_fraction
    if result.uncertainty_npy_base64:
        written["uncertainty"] = _write_uncertainty(out / stem, result)
    return written


def segment_files(
    predictor: Predictor,
    prompt_images: list[Path],
    prompt_masks: list[Path],
    queries: list[Path],
    out: Path,
    modality: str = "CT",
    title: str = "local",
) -> dict:
    """Segment with an in-process predictor (masks at the default threshold); also writes each query's uncertainty
    map as a grey PNG."""
    out.mkdir(parents=True, exist_ok=True)

    def read(paths: list[Path]) -> list[np.ndarray]:
        return [decode_image(str(path), path.read_bytes()) for path in paths]

    binary = [binary_mask(str(path), array) for path, array in zip(prompt_masks, read(prompt_masks), strict=True)]
    task = predictor.encode_task(read(prompt_images), binary, modality)
    results = predictor.segment(task, read(queries), modality)
    masks = [label_map([result.probability], [1], DEFAULT_THRESHOLD) for result in results]
    outputs = _write_outputs(queries, masks, out, modality, title)
    for output, path, result in zip(outputs, queries, results, strict=True):
        uncertainty_path = out / f"{path.stem}_uncertainty.png"
        Image.fromarray(np.clip(result.uncertainty * 255, 0, 255).astype(np.uint8)).save(uncertainty_path)
        output |= {"uncertainty": str(uncertainty_path), "mean_uncertainty": float(result.uncertainty.mean())}
    return {"n_prompts": task.n_prompts, "ensemble": task.members, "outputs": outputs}
