"""Prompts from an annotated volume, and propagation: "I labelled a few slices, do the rest of this scan".

`volume_prompts` turns a scan (storage.readers' RAS `Volume`) and its label volume (the same grid) into prompt pairs
along one RAS axis: the slices holding any wanted label value, evenly chosen across the labelled extent when there
are more than the model takes, plus the slices the user marks as annotated but empty (negatives). Images stay raw
slices at the scan's own spacing with their in-plane pixel spacing, and the intensity recipe is resolved for the
whole scan (an explicit low/high: the window, or the scan's own percentiles), so every slice of one scan is
normalized alike whether it is a prompt or a query, here or in a task stored by the endpoint.

`propagate` segments every slice of the same scan against those prompts through the predictor (the one
preparation recipe: normalize, fit to the model grid keeping the physical aspect, and back) and returns the RAS
label volume; slices the user annotated keep the user's labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from promptseg.inference.errors import InvalidInput
from promptseg.inference.postprocess import largest_components
from promptseg.inference.predictor import DEFAULT_THRESHOLD, Predictor, label_map
from storage.harmonize import PERCENTILES, NormalizationParams, volume_slices
from storage.readers.base import Volume as Scan

MAX_NEGATIVE_SHARE = 0.5  # at most this share of the prompts are annotated-empty slices


@dataclass(frozen=True)
class VolumePrompts:
    """Prompt pairs cut from one annotated scan along `axis` (slice `indices` of the RAS volume)."""

    images: list[np.ndarray]
    masks: dict[int, list[np.ndarray]]
    indices: list[int]
    axis: int
    pixel_spacing: tuple[float, float]
    intensity: NormalizationParams


def label_values(labels: np.ndarray, wanted: Sequence[int] | None) -> list[int]:
    """The label values to use: `wanted`, else every value the label volume holds."""
    if wanted:
        return list(wanted)
    present = sorted(int(v) for v in np.unique(labels) if v > 0)
    if not present:
        raise InvalidInput("label_volume", "the label volume holds no labels")
    return present


def scan_intensity(scan: Scan, params: NormalizationParams) -> NormalizationParams:
    """`params` with an explicit range for this scan: its window, or the scan's own percentiles of non-zero voxels."""
    if params.low is not None and params.high is not None:
        return params
    values = scan.array[scan.array != 0]
    low, high = np.percentile(values if values.size else scan.array, PERCENTILES)
    return NormalizationParams(params.modality, float(low), float(high))


def prompt_indices(labelled: Sequence[int], negatives: Sequence[int], n_max: int) -> tuple[list[int], list[int]]:
    """(labelled, negative) slice indices within `n_max`: negatives up to MAX_NEGATIVE_SHARE, the labelled slices
    evenly spread over their extent."""
    negatives = list(negatives)[: int(n_max * MAX_NEGATIVE_SHARE)]
    room = n_max - len(negatives)
    if len(labelled) > room:
        picks = np.unique(np.round(np.linspace(0, len(labelled) - 1, room)).astype(int))
        labelled = [labelled[i] for i in picks]
    return list(labelled), negatives


def volume_prompts(
    scan: Scan,
    labels: np.ndarray,
    values: Sequence[int],
    axis: int,
    n_max: int,
    intensity: NormalizationParams,
    annotated: Sequence[int] = (),
) -> VolumePrompts:
    """Prompt pairs for label `values` along RAS `axis` of `scan` from its label volume `labels` (RAS, same grid);
    `annotated` slice indices that hold no label are negatives."""
    if labels.shape != scan.array.shape:
        raise InvalidInput(
            "label_volume", f"label volume of shape {labels.shape} is not on the scan's grid {scan.array.shape}"
        )
    if axis not in (0, 1, 2):
        raise InvalidInput("axis", f"axis must be 0, 1 or 2, got {axis}")
    stack = volume_slices(labels, axis)
    wanted = np.isin(stack, list(values)).reshape(len(stack), -1).any(axis=1)
    labelled = np.flatnonzero(wanted).tolist()
    if not labelled:
        raise InvalidInput("label_volume", f"no slice along axis {axis} holds label values {list(values)}")
    outside = [i for i in annotated if not 0 <= i < len(stack)]
    if outside:
        raise InvalidInput("annotated", f"slices {outside} are outside 0..{len(stack) - 1} along axis {axis}")
    chosen, negatives = prompt_indices(labelled, [i for i in annotated if not wanted[i]], n_max)
    indices = sorted(chosen + negatives)
    images = volume_slices(scan.array, axis)
    rows, columns = (s for i, s in enumerate(scan.spacing) if i != axis)
    return VolumePrompts(
        images=[np.ascontiguousarray(images[i]) for i in indices],
        masks={int(v): [(stack[i] == v).astype(np.uint8) for i in indices] for v in values},
        indices=indices,
        axis=axis,
        pixel_spacing=(float(rows), float(columns)),
        intensity=scan_intensity(scan, intensity),
    )


def propagate(
    predictor: Predictor,
    scan: Scan,
    labels: np.ndarray,
    values: Sequence[int],
    axis: int,
    intensity: NormalizationParams,
    annotated: Sequence[int] = (),
    threshold: float = DEFAULT_THRESHOLD,
    largest_component: bool = False,
) -> np.ndarray:
    """The RAS label volume of `scan`: its annotated slices (labelled ones and `annotated`) as given, every other
    slice along `axis` segmented against them (each structure reduced to its largest 3D component, if asked)."""
    prompts = volume_prompts(scan, labels, values, axis, predictor.n_max, intensity, annotated)
    masks = {str(value): prompts.masks[value] for value in values}
    encodings = predictor.encode_labels(prompts.images, masks, prompts.intensity, spacing=prompts.pixel_spacing)
    queries = list(volume_slices(scan.array, axis))
    results = predictor.segment_labels(encodings, queries, prompts.intensity, prompts.pixel_spacing)
    probabilities = [np.stack([s.probability for s in results[str(value)]], axis=axis) for value in values]
    predicted = label_map(probabilities, values, threshold)
    if largest_component:
        predicted = largest_components(predicted, values)
    return keep_annotated(predicted, labels, values, axis, annotated)


def keep_annotated(
    predicted: np.ndarray, labels: np.ndarray, values: Sequence[int], axis: int, annotated: Sequence[int] = ()
) -> np.ndarray:
    """`predicted` (RAS) with the user's slices put back: every slice along `axis` holding one of `values`, and the
    `annotated` ones, as the label volume gives them (other label values dropped)."""
    given = np.zeros(labels.shape[axis], bool)
    given[list(annotated)] = True
    given |= np.isin(volume_slices(labels, axis), list(values)).reshape(len(given), -1).any(axis=1)
    kept = np.where(np.isin(labels, list(values)), labels, 0)
    chosen = np.where(np.expand_dims(given, [a for a in range(3) if a != axis]), kept, predicted)
    return chosen.astype(np.uint8 if max(values, default=0) <= 255 else np.uint16)
