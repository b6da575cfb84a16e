"""Segmentation metrics on binary masks given as numpy arrays (nonzero = foreground), computed with MONAI.

Dice and IoU are 1.0 when both masks are empty. The 95th-percentile Hausdorff distance (`hd95`) is 0.0 when
both masks are empty and nan when exactly one is (undefined); `summarize` skips such nan values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou


def _as_batch(mask: np.ndarray) -> torch.Tensor:
    """A binary mask as the (1, 1, *spatial) bool tensor MONAI expects."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))[None, None]


def dice_score(prediction: np.ndarray, target: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty."""
    return float(compute_dice(_as_batch(prediction), _as_batch(target), ignore_empty=False))


def iou_score(prediction: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union (Jaccard) of two binary masks; 1.0 when both are empty."""
    return float(compute_iou(_as_batch(prediction), _as_batch(target), ignore_empty=False))


def hd95(prediction: np.ndarray, target: np.ndarray, spacing: float | Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance between the mask boundaries, MONAI's definition.

    `spacing` is the pixel size, one number or one per axis (default 1: the result is in pixels). Both masks
    empty → 0.0; exactly one empty → nan. MONAI is only called with two non-empty masks, so it never warns.
    Its many tiny torch ops run best single-threaded: on a busy CPU, `torch.set_num_threads(1)` can make it 10× faster.
    """
    pred_any, true_any = bool(np.any(prediction)), bool(np.any(target))
    if not (pred_any and true_any):
        return 0.0 if pred_any == true_any else math.nan
    if spacing is not None:  # MONAI rejects mixed int/float sequences
        spacing = float(spacing) if np.isscalar(spacing) else [float(s) for s in spacing]
    with warnings.catch_warnings():  # MONAI 1.6 triggers its own deprecation warning inside get_mask_edges
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        distance = compute_hausdorff_distance(
            _as_batch(prediction), _as_batch(target), include_background=True, percentile=95, spacing=spacing
        )
    return float(distance)


def segmentation_metrics(
    prediction: np.ndarray, target: np.ndarray, spacing: float | Sequence[float] | None = None
) -> dict[str, float]:
    """Dice, IoU and HD95 (in units of `spacing`) of one prediction against its reference mask."""
    return {
        "dice": dice_score(prediction, target),
        "iou": iou_score(prediction, target),
        "hd95": hd95(prediction, target, spacing),
    }


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, population SD (ddof=0) and count of the finite values; nan and inf are skipped, mean/sd nan if none."""
    array = np.asarray(values, dtype=np.float64).ravel()
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return {"mean": math.nan, "sd": math.nan, "count": 0}
    return {"mean": float(finite.mean()), "sd": float(finite.std()), "count": int(finite.size)}
