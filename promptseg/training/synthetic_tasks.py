"""Synthetic segmentation tasks generated on the fly, for training diversity as in UniverSeg-style training.

`synthetic_batch`: each episode is a new random task: a family of blob/ellipse-like target shapes (size,
elongation, orientation, boundary irregularity, count) with a task-specific intensity and stripe texture, drawn on a
smooth random background of the episode's own brightness among distractor shapes of other intensities. Every image of
the episode, prompt or query alike, is a new independent instance of the same family; its mask is the union of the
target shapes, which are painted last and so never hidden.

`hard_synthetic_batch`: tasks that the prompts' intensities cannot solve, so that a model must read the masks' shape
and context (`HARD_KINDS`, one per episode):
- shape: elongated targets at the episode's orientation among distractors of the same intensity, area and texture
  that are round or turned by 90°;
- texture: target and background share their mean intensity and stripe amplitude; only the stripes' orientation
  differs;
- context: blobs of one intensity, of which only those parts inside a larger container of another intensity are
  the target;
and every image, prompt or query, gets its own random monotone intensity curve and smooth bias field, so that the
intensities of the prompts do not carry over to the query.

Everything is drawn from one CPU `torch.Generator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

_ANGLES = 256  # directions at which a shape's boundary radius is tabulated
HARD_KINDS = ("shape", "texture", "context")


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


class _Draws:
    """Random values of one hard batch: per episode (`draw`), repeated per image (`episodes`, `pixels`)."""

    def __init__(self, batch_size: int, per_episode: int, generator: torch.Generator) -> None:
        self.b, self.per_episode, self.m, self.g = batch_size, per_episode, batch_size * per_episode, generator

    def draw(self, bounds: tuple[float, float], *shape: int) -> Tensor:
        return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(*shape, generator=self.g)

    def episodes(self, values: Tensor) -> Tensor:
        return values.repeat_interleave(self.per_episode, 0)

    def pixels(self, values: Tensor) -> Tensor:
        return self.episodes(values)[:, None, None]


def _paint(image: Tensor, inside: Tensor, flat: Tensor, level: Tensor) -> Tensor:
    """The shapes' insides of (M, R, R) `image` set to each image's `level` (M,); returns the painted (M, R, R) mask."""
    image.view(-1)[flat[inside]] = level[:, None, None].expand_as(inside)[inside]
    painted = torch.zeros(image.numel(), dtype=torch.bool)
    painted[flat[inside]] = True
    return painted.view(image.shape)


def _stripes(d: _Draws, r: int, frequency: Tensor, angle: Tensor) -> Tensor:
    """(M, R, R) unit sinusoidal stripes per image at per-image `frequency` and `angle`, random phase."""
    ys = (torch.arange(r, dtype=torch.float32) + 0.5) / r
    wave = frequency[:, None, None] * (
        ys[None, None, :] * angle.cos()[:, None, None] + ys[None, :, None] * angle.sin()[:, None, None]
    )
    return torch.sin(2 * math.pi * wave + d.draw((0.0, 2 * math.pi), d.m)[:, None, None])


def _random_blobs(
    d: _Draws, r: int, centre: Tensor, radius: tuple[float, float], aspect: tuple[float, float], irregularity: float
) -> tuple[Tensor, Tensor]:
    """`_shapes` at `centre` (M, 2) with per-image random radius, aspect, orientation and irregularity."""
    return _shapes(
        r,
        centre,
        d.draw(radius, d.m),
        d.draw(aspect, d.m),
        d.draw((0.0, math.pi), d.m),
        d.draw((0.0, irregularity), d.m),
        d.g,
    )


def _shape_kind(d: _Draws, r: int) -> tuple[Tensor, Tensor]:
    level = d.draw((0.2, 0.8), d.b)
    image = d.pixels(_offset(level, d.draw((0.25, 0.4), d.b), d.g)) + d.pixels(
        d.draw((0.02, 0.06), d.b)
    ) * _smooth_noise(d.m, r, d.g)
    angle, radius = d.draw((0.0, math.pi), d.b), d.draw((0.09, 0.14), d.b)
    for _ in range(2):  # same intensity and area, another shape: round, or elongated across the target's direction
        round_ = torch.rand(d.m, generator=d.g) < 0.5
        aspect = torch.where(round_, d.draw((1.0, 1.2), d.m), d.draw((2.5, 3.5), d.m))
        turned = d.episodes(angle) + math.pi / 2 + d.draw((-0.2, 0.2), d.m)
        centre, size = d.draw((0.15, 0.85), d.m, 2), d.episodes(radius) * d.draw((0.85, 1.15), d.m)
        _paint(image, *_shapes(r, centre, size, aspect, turned, d.draw((0.0, 0.1), d.m), d.g), d.episodes(level))
    other = _offset(d.episodes(level), d.draw((0.2, 0.4), d.m), d.g)
    _paint(image, *_random_blobs(d, r, d.draw((0.1, 0.9), d.m, 2), (0.04, 0.08), (1.0, 3.0), 0.2), other)
    target = _shapes(
        r,
        d.draw((0.25, 0.75), d.m, 2),
        d.episodes(radius) * d.draw((0.85, 1.15), d.m),
        d.draw((2.5, 3.5), d.m),
        d.episodes(angle) + d.draw((-0.15, 0.15), d.m),
        d.draw((0.0, 0.1), d.m),
        d.g,
    )
    return image, _paint(image, *target, d.episodes(level))


def _texture_kind(d: _Draws, r: int) -> tuple[Tensor, Tensor]:
    level, amplitude = d.draw((0.3, 0.7), d.b), d.draw((0.12, 0.2), d.b)
    frequency, angle = d.episodes(d.draw((6.0, 12.0), d.b)), d.episodes(d.draw((0.0, math.pi), d.b))
    image = d.pixels(level) + d.pixels(amplitude) * _stripes(d, r, frequency, angle + math.pi / 2)
    other = _offset(d.episodes(level), d.draw((0.25, 0.4), d.m), d.g)
    _paint(image, *_random_blobs(d, r, d.draw((0.1, 0.9), d.m, 2), (0.05, 0.1), (1.0, 2.0), 0.2), other)
    radius, aspect = d.episodes(d.draw((0.12, 0.2), d.b)), d.episodes(d.draw((1.0, 2.0), d.b))
    target = _shapes(
        r,
        d.draw((0.25, 0.75), d.m, 2),
        radius * d.draw((0.85, 1.15), d.m),
        aspect,
        d.draw((0.0, math.pi), d.m),
        d.draw((0.0, 0.2), d.m),
        d.g,
    )
    mask = _paint(torch.zeros_like(image), *target, torch.ones(d.m))
    textured = d.pixels(level) + d.pixels(amplitude) * _stripes(d, r, frequency, angle)
    return torch.where(mask, textured, image), mask


def _context_kind(d: _Draws, r: int) -> tuple[Tensor, Tensor]:
    levels = torch.stack([torch.randperm(3, generator=d.g) for _ in range(d.b)]).float() * 0.3 + 0.2
    levels = d.episodes(levels + d.draw((-0.05, 0.05), d.b, 1))  # background, container, blobs: 0.3 apart
    image = levels[:, 0, None, None] + d.pixels(d.draw((0.02, 0.05), d.b)) * _smooth_noise(d.m, r, d.g)
    centre = d.draw((0.3, 0.7), d.m, 2)
    inside_container = _paint(image, *_random_blobs(d, r, centre, (0.2, 0.28), (1.0, 1.5), 0.15), levels[:, 1])
    blobs = torch.zeros_like(inside_container)
    for slot in range(4):  # the first blob sits in the container, the others anywhere
        where = centre + d.draw((-0.06, 0.06), d.m, 2) if slot == 0 else d.draw((0.1, 0.9), d.m, 2)
        blobs |= _paint(image, *_random_blobs(d, r, where, (0.04, 0.07), (1.0, 1.8), 0.2), levels[:, 2])
    return image, blobs & inside_container


def _per_image_intensity(d: _Draws, image: Tensor) -> Tensor:
    """Each image through its own monotone curve lo + (hi − lo)·x^γ (γ log-uniform in [0.5, 2]) and a smooth
    multiplicative bias field of up to ±15 %."""
    gamma = torch.exp(d.draw((math.log(0.5), math.log(2.0)), d.m))[:, None, None]
    low, high = d.draw((0.0, 0.2), d.m)[:, None, None], d.draw((0.8, 1.0), d.m)[:, None, None]
    curved = low + (high - low) * image.clamp(0, 1) ** gamma
    bias = 1 + d.draw((0.0, 0.15), d.m)[:, None, None] * _smooth_noise(d.m, image.shape[-1], d.g).clamp(-1, 1)
    return curved * bias


def hard_synthetic_batch(
    batch_size: int,
    n_prompts: int,
    n_queries: int,
    resolution: int,
    generator: torch.Generator,
    kinds: tuple[str, ...] = HARD_KINDS,
) -> dict[str, Tensor]:
    """A training batch of the episodes the module docstring calls hard, each of one of `kinds` at random, in
    `synthetic_batch`'s layout: float32 images in [0, 1] and {0, 1} masks, (B, N|Q, 1, R, R)."""
    if not kinds or set(kinds) - set(HARD_KINDS):
        raise ValueError(f"hard task kinds must be some of {HARD_KINDS}, got {kinds}")
    per_episode, r = n_prompts + n_queries, resolution
    drawn = torch.randint(len(kinds), (batch_size,), generator=generator)
    images = torch.empty(batch_size, per_episode, r, r)
    masks = torch.empty(batch_size, per_episode, r, r, dtype=torch.bool)
    makers = {"shape": _shape_kind, "texture": _texture_kind, "context": _context_kind}
    for index, kind in enumerate(kinds):
        chosen = (drawn == index).nonzero()[:, 0]
        if len(chosen):
            d = _Draws(len(chosen), per_episode, generator)
            image, mask = makers[kind](d, r)
            image = _blur(_per_image_intensity(d, image)) + d.pixels(d.draw((0.0, 0.03), d.b)) * torch.randn(
                d.m, r, r, generator=generator
            )
            images[chosen], masks[chosen] = (
                image.clamp(0, 1).view(-1, per_episode, r, r),
                mask.view(-1, per_episode, r, r),
            )
    images, masks = images[:, :, None], masks[:, :, None].float()
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
