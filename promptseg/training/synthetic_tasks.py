"""Synthetic segmentation tasks generated on the fly, for training diversity as in UniverSeg-style training.

Each episode is a new random task: a family of blob/ellipse-like target shapes (size, elongation, orientation,
boundary irregularity, count) with a task-specific intensity and stripe texture, drawn on a smooth random
background of the episode's own brightness among distractor shapes of other intensities. Every image of the
episode, prompt or query alike, is a new independent instance of the same family; its mask is the union of the
target shapes, which are painted last and so never hidden. Everything is drawn from one CPU `torch.Generator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

_ANGLES = 256  # directions at which a shape's boundary radius is tabulated


@dataclass
class SyntheticTaskConfig:
    """How synthetic tasks look; plain fields, so `SyntheticTaskConfig(**mapping)` builds one.

    Sizes are fractions of the image side. With the default radii, centres and irregularity every target shape
    lies mostly inside the image and covers at least ~2% of it, so masks are never empty."""

    target_shapes: tuple[int, int] = (1, 2)  # per episode, inclusive
    distractor_shapes: tuple[int, int] = (2, 5)  # per image, inclusive
    target_radius: tuple[float, float] = (0.1, 0.2)
    distractor_radius: tuple[float, float] = (0.04, 0.12)
    max_irregularity: float = 0.2  # total amplitude of the radial harmonics, relative to the radius
    background_contrast: tuple[float, float] = (0.25, 0.4)  # |target - background| intensity
    distractor_contrast: tuple[float, float] = (0.15, 0.4)  # |target - distractor| intensity


def synthetic_batch(
    batch_size: int,
    n_prompts: int,
    n_queries: int,
    resolution: int,
    generator: torch.Generator,
    config: SyntheticTaskConfig | None = None,
) -> dict[str, Tensor]:
    """A training batch of synthetic episodes: float32 images in [0, 1] and {0, 1} masks, (B, N|Q, 1, R, R)."""
    config = config or SyntheticTaskConfig()
    g, per_episode = generator, n_prompts + n_queries
    b, m, r = batch_size, batch_size * per_episode, resolution

    def draw(bounds: tuple[float, float], *shape: int) -> Tensor:
        return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(*shape, generator=g)

    def episodes(values: Tensor) -> Tensor:
        """Per-episode values repeated for each of the episode's images."""
        return values.repeat_interleave(per_episode, 0)

    def pixels(values: Tensor) -> Tensor:
        """Per-episode values as (M, 1, 1), to broadcast over each image's pixels."""
        return episodes(values)[:, None, None]

    target_level = draw((0.15, 0.85), b)
    background_level = _offset(target_level, draw(config.background_contrast, b), g)
    family = {
        "radius": draw(config.target_radius, b),
        "aspect": draw((1.0, 2.0), b),
        "angle": draw((0.0, math.pi), b),
        "irregularity": draw((0.0, config.max_irregularity), b),
    }
    n_targets = torch.randint(config.target_shapes[0], config.target_shapes[1] + 1, (b,), generator=g)
    stripes = {"amplitude": draw((0.0, 0.08), b), "frequency": draw((4.0, 16.0), b), "angle": draw((0.0, math.pi), b)}
    smooth_amplitude, grain_amplitude = draw((0.02, 0.08), b), draw((0.0, 0.04), b)

    image = pixels(background_level) + pixels(smooth_amplitude) * _smooth_noise(m, r, g)
    n_distractors = torch.randint(config.distractor_shapes[0], config.distractor_shapes[1] + 1, (m,), generator=g)
    for slot in range(config.distractor_shapes[1]):
        inside, flat = _shapes(
            r,
            draw((0.05, 0.95), m, 2),
            draw(config.distractor_radius, m),
            draw((1.0, 2.5), m),
            draw((0.0, math.pi), m),
            draw((0.0, config.max_irregularity), m),
            g,
        )
        level = _offset(episodes(target_level), draw(config.distractor_contrast, m), g)
        painted = inside & (slot < n_distractors)[:, None, None]
        image.view(-1)[flat[painted]] = level[:, None, None].expand_as(painted)[painted]

    mask = torch.zeros(m, r, r, dtype=torch.bool)
    for slot in range(config.target_shapes[1]):
        inside, flat = _shapes(
            r,
            draw((0.25, 0.75), m, 2),
            episodes(family["radius"]) * draw((0.85, 1.15), m),
            (episodes(family["aspect"]) * draw((0.85, 1.15), m)).clamp(min=1.0),
            episodes(family["angle"]) + draw((-0.3, 0.3), m),
            episodes(family["irregularity"]),
            g,
        )
        mask.view(-1)[flat[inside & pixels(slot < n_targets)]] = True

    ys = (torch.arange(r, dtype=torch.float32) + 0.5) / r
    angle = pixels(stripes["angle"])
    wave = pixels(stripes["frequency"]) * (ys[None, None, :] * angle.cos() + ys[None, :, None] * angle.sin())
    texture = torch.sin(2 * math.pi * wave + draw((0.0, 2 * math.pi), m)[:, None, None])
    target = pixels(target_level) + pixels(stripes["amplitude"]) * texture
    image = torch.where(mask, target, image)
    image = _blur(image) + pixels(grain_amplitude) * torch.randn(m, r, r, generator=g)

    images = image.clamp(0, 1).view(b, per_episode, 1, r, r)
    masks = mask.float().view(b, per_episode, 1, r, r)
    return {
        "prompt_images": images[:, :n_prompts].contiguous(),
        "prompt_masks": masks[:, :n_prompts].contiguous(),
        "queries": images[:, n_prompts:].contiguous(),
        "query_masks": masks[:, n_prompts:].contiguous(),
    }


def _offset(level: Tensor, distance: Tensor, g: torch.Generator) -> Tensor:
    """`level` moved by `distance` up or down at random, towards the other side where that would leave [0.05, 0.95]
    (always possible for levels in [0.15, 0.85] and distances up to 0.45)."""
    sign = torch.where(torch.rand(level.shape, generator=g) < 0.5, -1.0, 1.0)
    moved = level + sign * distance
    return torch.where((moved < 0.05) | (moved > 0.95), level - sign * distance, moved)


def _shapes(
    resolution: int,
    centre: Tensor,
    radius: Tensor,
    aspect: Tensor,
    angle: Tensor,
    irregularity: Tensor,
    g: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """One blob per image: an ellipse of mean radius `radius` and axis ratio `aspect`, turned by `angle`, its
    boundary modulated by random radial harmonics 2-4 of total amplitude at most `irregularity` (relative to the
    radius; tabulated over _ANGLES directions). Evaluated on a square window around each centre that holds every
    shape of the call: returns its (M, W, W) insides and their flat indices into an (M, R, R) image."""
    m, r = len(radius), resolution
    major, minor = radius * aspect.sqrt(), radius / aspect.sqrt()
    window = math.ceil(2 * float((major * (1 + irregularity)).max()) * r) + 2
    cols, rows = ((centre * r).long()[:, :, None] - window // 2 + torch.arange(window)).unbind(1)  # (M, W) each
    dx, dy = (cols + 0.5) / r - centre[:, :1], (rows + 0.5) / r - centre[:, 1:]
    cos, sin = angle.cos()[:, None], angle.sin()[:, None]
    u = (dx * cos / major[:, None])[:, None, :] + (dy * sin / major[:, None])[:, :, None]
    v = (dy * cos / minor[:, None])[:, :, None] - (dx * sin / minor[:, None])[:, None, :]

    directions = torch.arange(_ANGLES) * (2 * math.pi / _ANGLES) - math.pi
    amplitudes = irregularity[:, None, None] * torch.rand(m, 3, 1, generator=g) / 3
    phases = 2 * math.pi * torch.rand(m, 3, 1, generator=g)
    harmonics = torch.arange(2, 5, dtype=torch.float32)[None, :, None]
    boundary = 1.0 + (amplitudes * torch.cos(harmonics * directions + phases)).sum(1)  # (M, _ANGLES)
    bins = ((torch.atan2(v, u) + math.pi) * (_ANGLES / (2 * math.pi))).long().clamp_(max=_ANGLES - 1)
    inside = u * u + v * v < boundary.square().gather(1, bins.view(m, -1)).view(bins.shape)

    inside &= ((rows >= 0) & (rows < r))[:, :, None] & ((cols >= 0) & (cols < r))[:, None, :]
    flat = torch.arange(m)[:, None, None] * r * r + rows.clamp(0, r - 1)[:, :, None] * r + cols.clamp(0, r - 1)[:, None]
    return inside, flat


def _smooth_noise(m: int, r: int, g: torch.Generator) -> Tensor:
    """(M, R, R) smooth random fields of unit variance: random weights on a 5x5 grid of Gaussian bumps."""
    centres = torch.linspace(0.0, 1.0, 5)
    ys = (torch.arange(r, dtype=torch.float32) + 0.5) / r
    basis = torch.exp(-0.5 * ((ys[:, None] - centres[None]) / 0.25) ** 2)  # (R, 5)
    basis = basis / basis.norm(dim=1, keepdim=True)
    return basis @ torch.randn(m, 5, 5, generator=g) @ basis.T


def _blur(image: Tensor) -> Tensor:
    """A light separable [1, 2, 1] / 4 blur that softens the painted edges."""
    padded = F.pad(image[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    rows = 0.25 * (padded[:, :, :-2] + padded[:, :, 2:]) + 0.5 * padded[:, :, 1:-1]
    return 0.25 * (rows[:, :-2] + rows[:, 2:]) + 0.5 * rows[:, 1:-1]
