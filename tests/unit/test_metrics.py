"""Segmentation metrics and trivial baselines on small hand-made masks whose answers are derived by hand, and the
Hausdorff distance against MONAI's (its reference definition) on random masks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

from promptseg.evaluation.baselines import mean_prompt_mask, most_similar_prompt_mask
from promptseg.evaluation.metrics import dice_score, hd95, iou_score, segmentation_metrics, summarize


def square(top: int, left: int, side: int, size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top : top + side, left : left + side] = True
    return mask


EMPTY = np.zeros((32, 32), bool)


def test_dice_and_iou_of_half_overlapping_squares() -> None:
    a, b = square(0, 0, 4), square(0, 2, 4)  # 16 pixels each, 8 shared, union 24
    assert dice_score(a, b) == pytest.approx(2 * 8 / 32)
    assert iou_score(a, b) == pytest.approx(8 / 24)
    assert dice_score(a, a.astype(np.uint8)) == iou_score(a, a) == 1.0


def test_dice_and_iou_empty_cases() -> None:
    assert dice_score(EMPTY, EMPTY) == iou_score(EMPTY, EMPTY) == 1.0
    a = square(4, 4, 6)
    assert dice_score(a, EMPTY) == dice_score(EMPTY, a) == iou_score(a, EMPTY) == iou_score(EMPTY, a) == 0.0


def test_hd95_of_squares_offset_by_three_pixels() -> None:
    # Boundaries of two 10x10 squares 3 px apart along axis 1: every pixel of a left (or right) boundary column is
    # exactly 3 px from the other boundary and none is farther; those columns hold over a quarter of the boundary
    # pixels, so the 95th percentile of each directed distance set, and hence hd95, is 3.
    a, b = square(8, 8, 10), square(8, 11, 10)
    assert hd95(a, b) == hd95(b, a) == 3.0
    assert hd95(a, a) == 0.0


def test_hd95_scales_with_spacing_per_axis() -> None:
    a, b = square(8, 8, 10), square(8, 11, 10)
    assert hd95(a, b, spacing=0.5) == pytest.approx(1.5)
    assert hd95(a, b, spacing=(1, 2)) == pytest.approx(6.0)  # the offset axis is twice as coarse; ints accepted
    assert hd95(a, b, spacing=(2.0, 1.0)) == pytest.approx(3.0)  # stretching the other axis moves nothing closer


def test_hd95_ignores_a_single_outlying_pixel() -> None:
    # 36 boundary pixels coincide (distance 0) and one stray pixel is far away: its distance is above the 95th
    # percentile of the 37, so hd95 stays 0 where the plain Hausdorff distance would be about 20.
    a = square(2, 2, 10)
    b = a.copy()
    b[28, 28] = True
    assert hd95(a, b) == 0.0


def test_hd95_agrees_with_monais_on_random_masks_and_spacings() -> None:
    # MONAI is the reference definition; the project computes it with SciPy (MONAI's call is 50x slower on 64² masks)
    rng = np.random.default_rng(0)
    for trial in range(60):
        shape = (int(rng.integers(8, 64)), int(rng.integers(8, 64)))
        blobs = [ndimage.gaussian_filter(rng.random(shape), 2 + trial % 3) for _ in range(2)]
        a, b = (blob > np.quantile(blob, rng.uniform(0.3, 0.95)) for blob in blobs)
        if trial % 4 == 0:
            b = a.copy()
            b[rng.integers(0, shape[0]), rng.integers(0, shape[1])] ^= True  # a stray pixel, or a hole
        spacing = None if trial % 3 == 0 else (float(rng.uniform(0.3, 3)), float(rng.uniform(0.3, 3)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = compute_hausdorff_distance(
                torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], percentile=95, spacing=spacing
            )
        assert hd95(a, b, spacing) == pytest.approx(float(reference), rel=1e-5, abs=1e-5), (trial, spacing)


def test_hd95_empty_masks_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hd95(EMPTY, EMPTY) == 0.0
        assert math.isnan(hd95(square(4, 4, 6), EMPTY)) and math.isnan(hd95(EMPTY, square(4, 4, 6)))
        assert hd95(square(4, 4, 6), square(4, 5, 6)) == 1.0


def test_segmentation_metrics_keys() -> None:
    a, b = square(0, 0, 4), square(0, 2, 4)
    assert segmentation_metrics(a, b, spacing=2.0) == pytest.approx({"dice": 0.5, "iou": 1 / 3, "hd95": 4.0})
    empty = segmentation_metrics(a, EMPTY)
    assert empty["dice"] == empty["iou"] == 0.0 and math.isnan(empty["hd95"])


def test_summarize_skips_non_finite_values() -> None:
    assert summarize([1.0, math.nan, 3.0, math.inf]) == {"mean": 2.0, "sd": 1.0, "count": 2}
    assert summarize(np.array([0.25])) == {"mean": 0.25, "sd": 0.0, "count": 1}
    for values in ([], [math.nan]):
        result = summarize(values)
        assert result["count"] == 0 and math.isnan(result["mean"]) and math.isnan(result["sd"])


def test_most_similar_prompt_mask_picks_the_matching_prompt() -> None:
    rng = np.random.default_rng(0)
    prompt_images = rng.random((4, 1, 16, 16)).astype(np.float16)
    prompt_masks = np.stack([square(i, i, 5, size=16)[None] for i in range(4)]).astype(np.uint8)
    # Noisy copies of prompt 2 with other brightness and contrast, and one of prompt 0.
    contrast, brightness = np.array([3.0, 0.5, 1.0]).reshape(3, 1, 1, 1), np.array([5.0, -1.0, 0.0]).reshape(3, 1, 1, 1)
    noisy = prompt_images[[2, 2, 0]].astype(np.float64) * contrast + brightness
    queries = noisy + rng.normal(0, 0.05, noisy.shape)
    result = most_similar_prompt_mask(prompt_images, prompt_masks, queries)
    assert result.shape == (3, 1, 16, 16) and result.dtype == np.float32
    np.testing.assert_array_equal(result, prompt_masks[[2, 2, 0]])
    constant = np.full((1, 1, 16, 16), 0.3)  # correlates 0 with every prompt: the tie goes to the first
    np.testing.assert_array_equal(most_similar_prompt_mask(prompt_images, prompt_masks, constant), prompt_masks[:1])


def test_mean_prompt_mask_shape_and_value() -> None:
    masks = np.stack([square(0, 0, 4, size=8)[None], np.zeros((1, 8, 8), bool)]).astype(np.float32)
    result = mean_prompt_mask(masks, 3)
    assert result.shape == (3, 1, 8, 8)
    assert result[:, 0, 0, 0].tolist() == [0.5] * 3 and result[:, 0, 7, 7].tolist() == [0.0] * 3
