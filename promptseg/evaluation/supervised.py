"""The supervised reference: a MONAI UNet trained on a held-out task's own labelled slices (of other cases than
the queries'). It is a reference for what the task's own labels give, not an upper bound: with a few cases it can
score below an in-context method.

`fit_supervised_unet` trains a fresh 2D UNet on one task's slices (with flips and 90° rotations), holding back a
fifth of them (at least one) for early stopping: the loss on the held-back slices is measured every
`validate_every` steps, training stops after `patience` measurements without improvement or at `steps` (the cap),
and the best weights are kept. `predict_supervised` applies it to the task's other cases. Training is deterministic
given the seed and leaves the global random state as it was.
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
    steps: int = 2000,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    validate_every: int = 100,
    patience: int = 3,
) -> nn.Module:
    """Train the UNet on float (M, 1, R, R) images in [0, 1] and {0, 1} masks with early stopping as the module
    docstring says (without hold-back when M < 2); returns it in eval mode, with `trained_steps` set."""
    _check_training_data(images, masks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_supervised_unet()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    held = order[: max(1, len(images) // 5)] if len(images) >= 2 else order[:0]
    train = order[len(held) :]
    train_images, train_masks = (torch.as_tensor(a[train], dtype=torch.float32) for a in (images, masks))
    held_images, held_masks = (torch.as_tensor(a[held], dtype=torch.float32) for a in (images, masks))
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    best, best_state, waited = float("inf"), None, 0
    for step in range(1, steps + 1):
        network.train()
        index = torch.as_tensor(rng.integers(len(train_images), size=batch_size))
        batch_images, batch_masks = _augment(train_images[index], train_masks[index], rng)
        loss = segmentation_loss(network(batch_images)[:, None], batch_masks[:, None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if len(held) and (step % validate_every == 0 or step == steps):
            network.eval()
            with torch.inference_mode():
                held_loss = float(segmentation_loss(network(held_images)[:, None], held_masks[:, None]))
            if held_loss < best:
                best, waited = held_loss, 0
                best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            else:
                waited += 1
                if waited >= patience:
                    break
    if best_state is not None:
        network.load_state_dict(best_state)
    network.trained_steps = step  # where training stopped, for reports and tests
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
