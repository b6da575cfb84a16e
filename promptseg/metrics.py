"""Segmentation metrics on binary masks (numpy)."""

from __future__ import annotations

import numpy as np


def dice_score(prediction: np.ndarray, target: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty."""
    prediction, target = prediction.astype(bool), target.astype(bool)
    total = prediction.sum() + target.sum()
    if total == 0:
        return 1.0
    return float(2 * np.logical_and(prediction, target).sum() / total)
