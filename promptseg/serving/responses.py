"""Encoding a segmentation outcome into POST /v1/segment's `SegmentResponse`: each query's label map, or a volume's
probabilities mapped back onto its grid, at the request's threshold (promptseg.inference.predictor.label_map),
written as PNG/NPY masks or a NIfTI, DICOM SEG or NPY label volume on the input's grid and voxel order, with
foreground fractions and, when asked, float16 uncertainty maps and the model-grid slices the network received.
"""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np

from promptseg.inference.image_io import encode_labels, npy_bytes
from promptseg.inference.postprocess import largest_components
from promptseg.inference.predictor import label_map
from promptseg.inference.volume_io import dicom_seg_bytes, nifti_bytes
from promptseg.serving.api_models import MaskResult, SegmentResponse, VolumeResult
from promptseg.serving.segmentation import LabelMaps, Segmented


def _label_map(results: LabelMaps, index: int, values: list[int], threshold: float) -> np.ndarray:
    return label_map([maps[index].probability for maps in results.values()], values, threshold)


def _uncertainty(results: LabelMaps, indices: range | list[int]) -> np.ndarray:
    maps = np.stack([np.stack([maps[i].uncertainty for i in indices]) for maps in results.values()])
    return maps[0].astype(np.float16) if len(results) == 1 else np.moveaxis(maps, 0, 1).astype(np.float16)


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _fractions(labels: np.ndarray, values: list[int]) -> dict[str, float]:
    return {str(value): float((labels == value).mean()) for value in values}


def _volume_bytes(labels: np.ndarray, outcome: Segmented) -> bytes:
    if outcome.volume_format == "nifti":
        return nifti_bytes(labels, outcome.volume)
    if outcome.volume_format == "dicom-seg":
        serving = outcome.serving
        return dicom_seg_bytes(labels, outcome.volume, outcome.names, serving.model.name, serving.version)
    return encode_labels(labels, outcome.values, "npy")


def _volume_result(outcome: Segmented) -> VolumeResult:
    volume, values, request, parts = outcome.volume, outcome.values, outcome.request, outcome.parts
    maps = (outcome.volume_map(str(value), "probability") for value in values)
    labels = label_map(maps, values, request.threshold, np.uint8 if max(values) <= 255 else np.uint16)
    if request.largest_component:
        labels = largest_components(labels, values)
    data = _volume_bytes(labels, outcome)
    result = VolumeResult(
        volume=volume.name,
        shape=list(labels.shape),
        axis=parts[0][0].axis if len(parts) == 1 else None,
        n_slices=sum(len(prepared.grid) for prepared, _ in parts),
        volume_format=outcome.volume_format,
        volume_base64=_base64(data),
        foreground_fraction=_fractions(labels, values),
    )
    if request.uncertainty:
        maps = [outcome.volume_map(str(value), "uncertainty").astype(np.float16) for value in values]
        stacked = maps[0] if len(maps) == 1 else np.stack(maps)
        result.uncertainty_npy_base64 = _base64(npy_bytes(stacked))
    if request.model_input:
        result.model_input_npy_base64 = _base64(npy_bytes(parts[0][0].grid.astype(np.float16)))
    return result


def _mask_result(outcome: Segmented, index: int, name: str) -> MaskResult:
    request, values = outcome.request, outcome.values
    labels = _label_map(outcome.results, index, values, request.threshold)
    if request.largest_component:
        labels = largest_components(labels, values)
    uncertainty = _uncertainty(outcome.results, [index])[0] if request.uncertainty else None
    return MaskResult(
        query=name,
        height=labels.shape[0],
        width=labels.shape[1],
        mask_format=request.mask_format,
        mask_base64=_base64(encode_labels(labels, values, request.mask_format)),
        foreground_fraction=_fractions(labels, values),
        uncertainty_npy_base64=None if uncertainty is None else _base64(npy_bytes(uncertainty)),
    )


async def segment_response(outcome: Segmented, request_id: str) -> SegmentResponse:
    """The response body; `timings_ms` gains the time spent here as `encode_result`."""
    start = time.perf_counter()
    response = SegmentResponse(
        request_id=request_id,
        model_name=outcome.serving.model.name,
        model_version=outcome.serving.version,
        task_id=outcome.request.task_id,
        n_prompts=outcome.n_prompts,
        labels=outcome.values,
        ensemble=outcome.request.ensemble,
        timings_ms={},
    )
    if outcome.volume is not None:
        response.volume = await asyncio.to_thread(_volume_result, outcome)
    else:
        response.masks = [_mask_result(outcome, index, name) for index, name in enumerate(outcome.query_names)]
    response.timings_ms = outcome.timings_ms | {"encode_result": 1e3 * (time.perf_counter() - start)}
    return response
