"""Baselines without learning in the model's interface: they show what a model must beat to be using its prompts
(the trivial mean prompt mask and most similar prompt, and the prior rule built from the network's own priors).

Arrays are (count, 1, R, R) like the model's inputs and outputs; a baseline returns the foreground probability of
every query, (Q, 1, R, R).
"""

from __future__ import annotations

import numpy as np
import torch

from promptseg.nets.model import intensity_log_ratio


def mean_prompt_mask(prompt_masks: np.ndarray, n_queries: int) -> np.ndarray:
    """The average of the prompt masks as the foreground probability of every query: (N, 1, R, R) → (Q, 1, R, R)."""
    return np.repeat(prompt_masks.mean(axis=0, keepdims=True), n_queries, axis=0)


def _z_scored(images: np.ndarray) -> np.ndarray:
    """Each image flattened to zero mean and unit variance; a constant image becomes all zeros."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    centred = flat - flat.mean(axis=1, keepdims=True)
    varies = np.ptp(flat, axis=1, keepdims=True) > 0  # a constant image's float std need not be exactly 0
    return np.divide(centred, centred.std(axis=1, keepdims=True), out=np.zeros_like(centred), where=varies)


def most_similar_prompt_mask(
    prompt_images: np.ndarray, prompt_masks: np.ndarray, query_images: np.ndarray
) -> np.ndarray:
    """Each query gets the mask of its most similar prompt image: (N, 1, R, R) ×2, (Q, 1, R, R) → (Q, 1, R, R) float32.

    Similarity is the normalized cross-correlation of the z-scored images (their Pearson correlation over pixels),
    so it ignores brightness and contrast. A constant image correlates 0 with every other; ties go to the first prompt.
    """
    prompts, queries = _z_scored(prompt_images), _z_scored(query_images)
    correlation = queries @ prompts.T / prompts.shape[1]  # (Q, N)
    return prompt_masks[correlation.argmax(axis=1)].astype(np.float32)


LOCATION_FLOOR = 0.01  # the mean prompt mask is clipped to [0.01, 0.99] before its logit


def prior_rule(prompt_images: np.ndarray, prompt_masks: np.ndarray, query_images: np.ndarray) -> np.ndarray:
    """The no-learning prior rule: the two priors the PromptSeg network computes from its prompts, combined as
    naive Bayes with no trained parameter: (N, 1, R, R) ×2, (Q, 1, R, R) → (Q, 1, R, R) float32 probabilities.

    logit p(foreground | pixel) = log p(intensity | fg) / p(intensity | bg) (the prompts' smoothed intensity
    histograms, `promptseg.nets.model.intensity_log_ratio`, looked up at the query's pixel) + logit of the mean
    prompt mask at that position, clipped to [LOCATION_FLOOR, 1 − LOCATION_FLOOR] so that a pixel no prompt marked
    can still be claimed by a strongly foreground intensity. bench/bench_prior_rule.py checks it against the figures
    the rule was first measured with.
    """
    images = torch.from_numpy(np.asarray(prompt_images, np.float32))
    masks = torch.from_numpy(np.asarray(prompt_masks, np.float32))
    ratio = intensity_log_ratio(images, masks, 1)[0].numpy()
    bins = len(ratio)
    index = np.rint(np.clip(np.asarray(query_images, np.float32), 0, 1) * (bins - 1)).astype(np.int64)
    location = np.clip(
        np.asarray(prompt_masks, np.float32).mean(axis=0, keepdims=True), LOCATION_FLOOR, 1 - LOCATION_FLOOR
    )
    logits = ratio[index] + np.log(location / (1.0 - location))
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
