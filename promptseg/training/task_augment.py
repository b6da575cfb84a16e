"""Task augmentation for episodic training, as in UniverSeg's and PromptSeg's training.

Each episode of a batch gets ONE random transform, applied identically to all of its prompt and query images
and masks: the appearance of the task changes, the task itself stays consistent. The geometry (flip, rot90,
affine, elastic warp) is one sampling grid per episode; the intensity mapping (gamma, contrast, brightness,
inversion) is shared by the episode's images, only the Gaussian noise is drawn per image at the episode's level.
Label inversion and edge labels change what the task asks for, again for the whole episode. Every random number
comes from one CPU `torch.Generator`, so a saved `generator.get_state()` reproduces a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# rot90 by k quarter turns and the horizontal flip, as exact 2x2 matrices on (x, y) sampling coordinates.
_ROT90 = torch.tensor([[[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]]], dtype=torch.float64)
_FLIP = torch.tensor([[[1, 0], [0, 1]], [[-1, 0], [0, 1]]], dtype=torch.float64)


@dataclass
class TaskAugmentConfig:
    """Per-episode probabilities and ranges; plain fields, so `TaskAugmentConfig(**mapping)` builds one."""

    enabled: bool = True
    flip_p: float = 0.5
    rot90_p: float = 0.5
    affine_p: float = 0.5
    rotate_degrees: float = 15.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    translate_fraction: float = 0.05  # of the image side, in each direction
    elastic_p: float = 0.25
    elastic_magnitude: float = 0.015  # displacement sd as a fraction of the image side
    elastic_grid: int = 6  # control points per side of the coarse displacement field
    intensity_p: float = 0.5
    gamma_range: tuple[float, float] = (0.7, 1.5)
    contrast_range: tuple[float, float] = (0.8, 1.2)
    brightness: float = 0.1  # largest shift either way
    noise_std: float = 0.03  # largest per-episode noise sd
    intensity_invert_p: float = 0.5
    label_invert_p: float = 0.1
    edge_label_p: float = 0.1


def augment_batch(batch: dict[str, Tensor], config: TaskAugmentConfig, generator: torch.Generator) -> dict[str, Tensor]:
    """New tensors of the same shapes and dtypes: images in [0, 1], masks in {0, 1}; other keys pass through."""
    if not config.enabled:
        return dict(batch)
    n_prompts = batch["prompt_images"].shape[1]
    images = torch.cat([batch["prompt_images"], batch["queries"]], dim=1)
    masks = torch.cat([batch["prompt_masks"], batch["query_masks"]], dim=1)
    b, device = images.shape[0], images.device
    g = generator

    probabilities = [config.flip_p, config.rot90_p, config.affine_p, config.elastic_p, config.intensity_p]
    probabilities += [config.intensity_invert_p, config.label_invert_p, config.edge_label_p]
    flip, rot90, affine, elastic, intensity, invert, label_invert, edge = (
        torch.rand(b, len(probabilities), generator=g) < torch.tensor(probabilities)
    ).T
    quarter_turns = torch.randint(1, 4, (b,), generator=g) * rot90
    angle, scale, shift_x, shift_y, gamma, contrast, brightness, noise_sd = torch.rand(b, 8, generator=g).T
    coarse = torch.randn(b, 2, config.elastic_grid, config.elastic_grid, generator=g)
    thickness = torch.randint(1, 4, (b,), generator=g)
    noise_seed = int(torch.randint(2**62, (1,), generator=g))

    moved = flip | rot90 | affine | elastic
    if moved.any():
        angle = (2 * angle - 1) * math.radians(config.rotate_degrees) * affine
        scale = torch.where(affine, _between(scale, config.scale_range), 1.0)
        shift = (torch.stack([shift_x, shift_y], 1) * 2 - 1) * (2 * config.translate_fraction) * affine[:, None]
        theta = _affine_matrices(angle, scale, shift, _ROT90[quarter_turns] @ _FLIP[flip.long()])
        _warp(images, masks, moved, theta, coarse * (2 * config.elastic_magnitude), elastic)

    if label_invert.any():
        chosen = _indices(label_invert, device)
        masks[chosen] = 1 - masks[chosen]
    for episode in edge.nonzero().squeeze(1).tolist():
        masks[episode] = _edge_band(masks[episode], int(thickness[episode]))

    if intensity.any():
        chosen = _indices(intensity, device)
        gamma = torch.exp(_between(gamma, [math.log(v) for v in config.gamma_range]))
        brightness = (2 * brightness - 1) * config.brightness
        mapped = images[chosen].clamp(0, 1) ** _column(gamma[intensity], images)
        mapped = (mapped - 0.5) * _column(_between(contrast, config.contrast_range)[intensity], images) + 0.5
        mapped = mapped + _column(brightness[intensity], images)
        if config.noise_std > 0:
            noise_generator = torch.Generator(device=device).manual_seed(noise_seed)
            noise = torch.randn(mapped.shape, generator=noise_generator, device=device, dtype=mapped.dtype)
            mapped = mapped + noise * _column(noise_sd[intensity] * config.noise_std, images)
        images[chosen] = mapped.clamp(0, 1)
    if invert.any():
        chosen = _indices(invert, device)
        images[chosen] = 1 - images[chosen]

    n_queries = images.shape[1] - n_prompts
    out = dict(batch)
    out["prompt_images"], out["queries"] = (part.contiguous() for part in images.split([n_prompts, n_queries], 1))
    out["prompt_masks"], out["query_masks"] = (part.contiguous() for part in masks.split([n_prompts, n_queries], 1))
    return out


def _between(unit: Tensor, bounds: tuple[float, float] | list[float]) -> Tensor:
    """Map uniform [0, 1) draws onto [low, high)."""
    return bounds[0] + (bounds[1] - bounds[0]) * unit


def _indices(flags: Tensor, device: torch.device) -> Tensor:
    """Indices of the episodes whose (B,) flag is set, on the batch's device."""
    return flags.nonzero().squeeze(1).to(device)


def _column(values: Tensor, like: Tensor) -> Tensor:
    """(E,) per-episode values shaped to broadcast over (E, K, C, H, W) on `like`'s device and dtype."""
    return values.to(like.device, like.dtype).view(-1, *[1] * (like.dim() - 1))


def _affine_matrices(angle: Tensor, scale: Tensor, shift: Tensor, dihedral: Tensor) -> Tensor:
    """(B, 2, 3) maps from output to input sampling coordinates: flip/rot90 (`dihedral`), rotate by `angle`,
    zoom in by `scale`, then shift."""
    cos, sin = torch.cos(angle.double()) / scale, torch.sin(angle.double()) / scale
    rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    return torch.cat([rotation @ dihedral, shift.double()[:, :, None]], 2)


def _warp(images: Tensor, masks: Tensor, moved: Tensor, theta: Tensor, coarse: Tensor, elastic: Tensor) -> None:
    """Resample in place the `moved` episodes, all their images and masks through one grid each: the affine map
    plus, where `elastic`, the coarse displacement field upsampled to the image. Masks are resampled bilinearly
    and thresholded at 0.5; outside the image is zero."""
    device, dtype, size, k = images.device, images.dtype, images.shape[-2:], images.shape[1]
    grid = F.affine_grid(theta[moved].to(device, dtype), [int(moved.sum()), 1, *size], align_corners=False)
    if elastic.any():
        field = F.interpolate(coarse[elastic].to(device, dtype), size=size, mode="bicubic", align_corners=True)
        grid[_indices(elastic[moved], device)] += field.permute(0, 2, 3, 1)
    chosen = _indices(moved, device)
    both = torch.cat([images[chosen], masks[chosen].to(dtype)], dim=1)
    warped = F.grid_sample(both.flatten(1, 2), grid, align_corners=False).view(both.shape)
    images[chosen] = warped[:, :k]
    masks[chosen] = (warped[:, k:] > 0.5).to(masks.dtype)


def _edge_band(masks: Tensor, thickness: int) -> Tensor:
    """The boundary band of `thickness` pixels straddling each mask's edge: dilation minus erosion."""
    outer, inner = thickness // 2, (thickness + 1) // 2
    return _dilate(masks, outer) - (1 - _dilate(1 - masks, inner))


def _dilate(masks: Tensor, radius: int) -> Tensor:
    """Binary dilation by a (2 radius + 1)-pixel square, as two separable max-pools; the image border stays put."""
    if radius == 0:
        return masks
    size = 2 * radius + 1
    rows = F.max_pool2d(masks, (1, size), stride=1, padding=(0, radius))
    return F.max_pool2d(rows, (size, 1), stride=1, padding=(radius, 0))
