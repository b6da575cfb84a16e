"""Trivial baselines in the model's interface: they show what a model must beat to be using its prompts."""

from __future__ import annotations

import numpy as np


def mean_prompt_mask(prompt_masks: np.ndarray, n_queries: int) -> np.ndarray:
    """The average of the prompt masks as the foreground probability of every query: (N, 1, R, R) → (Q, 1, R, R)."""
    return np.repeat(prompt_masks.mean(axis=0, keepdims=True), n_queries, axis=0)
