"""Contract 2 (model I/O) checks shared by every in-context network: shapes, prompt counts, binary masks, NaNs.

Every network (PromptSeg, the UniverSeg-style baseline) takes::

    prompt_images (B, N, 1, R, R) float in [0, 1]     N from 1 to n_max
    prompt_masks  (B, N, 1, R, R) in {0, 1}
    queries       (B, Q, 1, R, R) float in [0, 1]
    → logits      (B, Q, 1, R, R)

and offers `encode_prompts(prompt_images, prompt_masks)` (a NamedTuple of tensors, batch axis first, that can be
cached), `segment(encoding, queries)`, and `forward(..., return_kl=True)` giving (logits, a KL term per task) for
the trainer (zeros for a network without an information bottleneck). Violations raise `ValueError` with the
argument's name. Imports only torch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_images(name: str, tensor: Tensor, resolution: int) -> None:
    """A (B, N, 1, R, R) floating tensor with finite values."""
    if tensor.ndim != 5 or tuple(tensor.shape[2:]) != (1, resolution, resolution):
        raise ValueError(f"{name} must have shape (B, N, 1, {resolution}, {resolution}), got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if tensor.device.type != "meta" and not torch.isfinite(tensor).all():  # meta tensors (cost counting) hold no values
        raise ValueError(f"{name} contains NaN or infinite values")


def check_prompts(prompt_images: Tensor, prompt_masks: Tensor, resolution: int, n_max: int) -> None:
    """Prompt images and masks of the same (B, N) with 1 ≤ N ≤ n_max and masks in {0, 1}."""
    check_images("prompt_images", prompt_images, resolution)
    check_images("prompt_masks", prompt_masks, resolution)
    if prompt_images.shape[:2] != prompt_masks.shape[:2]:
        raise ValueError(
            f"prompt_images {tuple(prompt_images.shape[:2])} and prompt_masks {tuple(prompt_masks.shape[:2])} "
            "must have the same (B, N)"
        )
    n = prompt_images.shape[1]
    if not 1 <= n <= n_max:
        raise ValueError(f"number of prompts must be between 1 and {n_max}, got {n}")
    if prompt_masks.device.type != "meta" and not ((prompt_masks == 0) | (prompt_masks == 1)).all():
        raise ValueError("prompt_masks must be binary (values 0 and 1 only)")
