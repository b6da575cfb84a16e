"""Prompts from an annotated volume: which slices become prompts, negatives from `annotated`, one intensity range
per scan; propagation keeps the user's slices and fills every other one on the scan's grid."""

from __future__ import annotations

import numpy as np
import pytest

from promptseg.inference.errors import InvalidInput
from promptseg.inference.postprocess import largest_components
from promptseg.inference.predictor import Predictor
from promptseg.inference.propagation import prompt_indices, propagate, volume_prompts
from promptseg.nets.factory import build_model, model_config
from storage.harmonize import NormalizationParams
from storage.preparation import Preparation, model_slices
from storage.readers.base import Volume

CT = NormalizationParams("CT")


def _scan() -> tuple[Volume, np.ndarray]:
    image = np.random.default_rng(0).normal(0, 50, (40, 30, 20)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[10:30, 8:20, 5] = 1
    labels[12:28, 10:18, 9] = 1
    labels[14:26, 10:16, 13] = 2
    image[labels > 0] += 300
    return Volume(image, (0.8, 0.8, 2.5), "CT"), labels


def test_labelled_slices_spread_over_their_extent_and_negatives_are_capped() -> None:
    labelled, negatives = prompt_indices(list(range(10, 30)), [2, 3, 4, 5, 6], 8)
    assert negatives == [2, 3, 4, 5] and len(labelled) == 4
    assert labelled[0] == 10 and labelled[-1] == 29


def test_prompts_are_the_labelled_slices_with_the_scans_spacing_and_one_range() -> None:
    scan, labels = _scan()
    prompts = volume_prompts(scan, labels, [1, 2], 2, 8, CT, annotated=[0, 5])
    assert prompts.indices == [0, 5, 9, 13] and prompts.pixel_spacing == (0.8, 0.8)
    assert [int(m.sum()) for m in prompts.masks[2]] == [0, 0, 0, 12 * 6]
    assert prompts.intensity.low is not None and prompts.intensity.high > prompts.intensity.low
    with pytest.raises(InvalidInput, match="no slice along axis 2 holds label values \\[3\\]"):
        volume_prompts(scan, labels, [3], 2, 8, CT)
    with pytest.raises(InvalidInput, match="outside"):
        volume_prompts(scan, labels, [1], 2, 8, CT, annotated=[20])
    with pytest.raises(InvalidInput, match="not on the scan's grid"):
        volume_prompts(scan, labels[:, :, :10], [1], 2, 8, CT)


def test_propagation_keeps_the_users_slices_and_fills_the_others() -> None:
    scan, labels = _scan()
    predictor = Predictor(build_model(model_config("tiny", 32)), device="cpu", batch_size=8)
    result = propagate(predictor, scan, labels, [1, 2], 2, CT, annotated=[0])
    assert result.shape == labels.shape and set(np.unique(result)) <= {0, 1, 2}
    for k in (0, 5, 9, 13):
        np.testing.assert_array_equal(result[..., k], labels[..., k])


def test_a_model_grid_pixel_measures_the_slices_longer_physical_side_over_the_grid() -> None:
    preparation = Preparation(CT, (0.8, 0.5, 2.5), 32)
    _, geometry = model_slices(np.zeros((40, 64, 10), np.float32), 2, preparation)
    assert preparation.grid_spacing_mm(2, geometry) == pytest.approx(max(40 * 0.8, 64 * 0.5) / 32)


def test_each_structure_keeps_only_its_largest_component() -> None:
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    labels[5:9, 5:9, 5:9] = 1
    labels[0, 9, 9] = 2
    labels[3:6, 0:2, 0:2] = 2
    kept = largest_components(labels, [1, 2])
    assert (kept == 1).sum() == 64 and (kept == 2).sum() == 12 and kept[1, 1, 1] == 0 and kept[0, 9, 9] == 0
    np.testing.assert_array_equal(largest_components(labels[..., 6], [1]), (labels[..., 6] == 1) * 1)
