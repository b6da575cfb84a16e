"""The supervised upper-bound baseline: a MONAI UNet trained on a held-out task's own labelled slices.

`fit_supervised_unet` trains a fresh 2D UNet on one task's slices (with flips and 90° rotations) and
`predict_supervised` applies it to that task's other cases. Training is deterministic given the seed and leaves
the global random state as it was.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.nets import UNet
from torch import Tensor, nn

from promptseg.nets.losses import segmentation_loss

DOWNSAMPLING = 8  # the UNet's three stride-2 levels


def build_supervised_unet() -> nn.Module:
    """The baseline's network: a small 2D MONAI UNet, one input channel, one logit channel."""
    return UNet(
        spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1
    )


def _check_training_data(images: np.ndarray, masks: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must have shape (M, 1, R, R) with M ≥ 1, got {images.shape}")
    if masks.shape != images.shape:
        raise ValueError(f"masks shape {masks.shape} must equal images shape {images.shape}")
    if images.shape[-1] % DOWNSAMPLING:
        raise ValueError(f"resolution must be divisible by {DOWNSAMPLING}, got {images.shape[-1]}")


def _augment(images: Tensor, masks: Tensor, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """The same random 90° rotation and optional horizontal flip for every slice of the batch and its masks."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    images, masks = torch.rot90(images, k, dims=(-2, -1)), torch.rot90(masks, k, dims=(-2, -1))
    if flip:
        images, masks = images.flip(-1), masks.flip(-1)
    return images, masks


def fit_supervised_unet(
    images: np.ndarray,
    masks: np.ndarray,
    *,
    steps: int = 200,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
) -> nn.Module:
    """Train the UNet on float (M, 1, R, R) images in [0, 1] and {0, 1} masks; returns it in eval mode."""
    _check_training_data(images, masks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_supervised_unet()
    all_images = torch.as_tensor(images, dtype=torch.float32)
    all_masks = torch.as_tensor(masks, dtype=torch.float32)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    network.train()
    for _ in range(steps):
        index = torch.as_tensor(rng.integers(len(all_images), size=batch_size))
        batch_images, batch_masks = _augment(all_images[index], all_masks[index], rng)
        loss = segmentation_loss(network(batch_images)[:, None], batch_masks[:, None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return network.eval()


def predict_supervised(network: nn.Module, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Foreground probabilities (M, 1, R, R) float32 for float (M, 1, R, R) images, on the network's device."""
    device = next(network.parameters()).device
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.as_tensor(images[start : start + batch_size], dtype=torch.float32, device=device)
            outputs.append(torch.sigmoid(network(batch)).cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, *images.shape[1:]), np.float32)
