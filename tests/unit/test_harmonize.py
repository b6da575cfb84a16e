"""The harmonization recipe and the fingerprint on known inputs: values, spacing, geometry, the target-spacing rule."""

from __future__ import annotations

import numpy as np

from storage.fingerprint import target_spacing
from storage.harmonize import (
    NormalizationParams,
    from_model_grid,
    normalization_for,
    normalize_intensity,
    resample_volume,
    to_model_grid,
    volume_slices,
)


def test_ct_uses_the_window_or_dataset_percentiles_and_others_per_image_percentiles() -> None:
    image = np.array([-1000.0, -100.0, 0.0, 100.0, 300.0], np.float32)
    window = normalization_for("CT", (-50.0, 250.0), ct_window=(-100.0, 300.0))
    np.testing.assert_allclose(normalize_intensity(image, window), [0.0, 0.0, 0.25, 0.5, 1.0])
    dataset = normalization_for("CT", (-100.0, 300.0))
    assert (dataset.low, dataset.high) == (-100.0, 300.0)
    mr = normalization_for("MR", (1.0, 2.0))
    assert (mr.low, mr.high) == (None, None)
    scan = np.concatenate([np.zeros(100), np.linspace(10, 1010, 1001)]).astype(np.float32)
    scaled = normalize_intensity(scan, mr)
    assert scaled.min() == 0.0 and scaled.max() == 1.0 and abs(float(np.median(scaled[100:])) - 0.5) < 0.01
    assert np.allclose(normalize_intensity(np.array([0, 255], np.uint8), NormalizationParams("MR")), [0.0, 1.0])


def test_resampling_changes_the_grid_by_spacing_and_keeps_labels_discrete() -> None:
    label = np.zeros((20, 20, 10), np.uint8)
    label[5:15, 4:12, 2:8] = 3
    resampled = resample_volume(label, (1.0, 1.0, 4.0), (2.0, 2.0, 2.0), label=True)
    assert resampled.shape == (10, 10, 20)
    assert set(np.unique(resampled).tolist()) == {0, 3}
    volume_before = (label > 0).sum() * 1 * 1 * 4
    volume_after = (resampled > 0).sum() * 2 * 2 * 2
    assert abs(volume_after - volume_before) / volume_before < 0.15
    ramp = np.tile(np.arange(20, dtype=np.float32)[:, None, None], (1, 4, 4))
    resampled_ramp = resample_volume(ramp, (1.0, 1.0, 1.0), (2.0, 1.0, 1.0))
    assert resampled_ramp.shape == (10, 4, 4) and np.all(np.diff(resampled_ramp[:, 0, 0]) > 0)  # RAS order kept


def test_target_spacing_follows_nnunet_rule() -> None:
    assert target_spacing([[1.0, 1.0, 1.0], [1.2, 1.2, 1.2], [0.8, 0.8, 0.8]]) == [1.0, 1.0, 1.0]
    anisotropic = [[0.8, 0.8, 5.0], [0.8, 0.8, 5.0], [0.8, 0.8, 5.0], [0.8, 0.8, 2.5]]
    target = target_spacing(anisotropic)
    assert target[:2] == [0.8, 0.8] and 2.5 <= target[2] < 5.0


def test_slices_keep_their_physical_aspect_and_map_back() -> None:
    slab = np.zeros((1, 10, 40), np.float32)
    slab[0, 2:8, 5:35] = 1
    grid, geometry = to_model_grid(slab, 64, label=True, spacing=(4.0, 1.0))  # 40 mm × 40 mm: fills the grid
    assert (geometry.box_height, geometry.box_width) == (64, 64)
    grid, geometry = to_model_grid(slab, 64, label=True)  # 10 × 40 pixels of 1 mm: a 16 × 64 band
    assert (geometry.box_height, geometry.box_width, geometry.top) == (16, 64, 24)
    assert grid[0, :24].sum() == 0 and grid[0, 40:].sum() == 0
    assert np.array_equal(from_model_grid(grid, geometry, label=True), slab)
    volume = np.arange(24).reshape(2, 3, 4)
    assert volume_slices(volume, 1).shape == (3, 2, 4)
