"""Training loss: binary cross-entropy plus soft Dice of the foreground, equally weighted."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """1 − soft Dice per image (foreground only), averaged; `eps` keeps empty targets finite."""
    probs = torch.sigmoid(logits).flatten(2)
    target = target.flatten(2)
    intersection = (probs * target).sum(-1)
    dice = (2 * intersection + eps) / (probs.sum(-1) + target.sum(-1) + eps)
    return 1 - dice.mean()


def segmentation_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy + Dice on (B, Q, 1, R, R) logits and {0, 1} targets."""
    return F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(logits, target)
