"""Task augmentation (one transform per episode) and synthetic tasks: layout, value ranges, consistency."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from promptseg.training.synthetic_tasks import synthetic_batch
from promptseg.training.task_augment import TaskAugmentConfig, augment_batch

KEYS = ("prompt_images", "prompt_masks", "queries", "query_masks")
ALL_OFF = {
    "flip_p": 0.0,
    "rot90_p": 0.0,
    "affine_p": 0.0,
    "elastic_p": 0.0,
    "intensity_p": 0.0,
    "intensity_invert_p": 0.0,
    "label_invert_p": 0.0,
    "edge_label_p": 0.0,
}
ALL_ON = {key: 1.0 for key in ALL_OFF}


def _episodes(images: torch.Tensor, masks: torch.Tensor, n_prompts: int) -> dict[str, torch.Tensor]:
    return {
        "prompt_images": images[:, :n_prompts].contiguous(),
        "prompt_masks": masks[:, :n_prompts].contiguous(),
        "queries": images[:, n_prompts:].contiguous(),
        "query_masks": masks[:, n_prompts:].contiguous(),
    }


def _copies_batch(batch_size: int = 6, n_prompts: int = 4, n_queries: int = 2, r: int = 48) -> dict:
    """Every image (and mask) of an episode is the same copy; episodes share one random image and a disc mask."""
    image = torch.rand(1, 1, 1, r, r, generator=torch.Generator().manual_seed(0))
    yy, xx = torch.meshgrid(torch.arange(r), torch.arange(r), indexing="ij")
    mask = (((yy - 0.45 * r) ** 2 + (xx - 0.55 * r) ** 2) < (0.25 * r) ** 2).float()[None, None, None]
    shape = (batch_size, n_prompts + n_queries, 1, r, r)
    return _episodes(image.expand(shape).clone(), mask.expand(shape).clone(), n_prompts)


def _stacked(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.cat([batch["prompt_images"], batch["queries"]], 1)
    return images, torch.cat([batch["prompt_masks"], batch["query_masks"]], 1)


def _check_layout(out: dict, batch: dict) -> None:
    for key in KEYS:
        assert out[key].shape == batch[key].shape and out[key].dtype == batch[key].dtype, key
        assert out[key].is_contiguous(), key
    images, masks = _stacked(out)
    assert images.min() >= 0 and images.max() <= 1
    assert set(masks.unique().tolist()) <= {0.0, 1.0}


def test_augmented_batches_keep_layout_and_ranges() -> None:
    batch = synthetic_batch(4, 5, 2, 64, torch.Generator().manual_seed(1))
    for config in (TaskAugmentConfig(), TaskAugmentConfig(**ALL_ON)):
        generator = torch.Generator().manual_seed(2)
        for _ in range(5):
            _check_layout(augment_batch(batch, config, generator), batch)


def test_every_image_of_an_episode_gets_the_same_transform() -> None:
    batch = _copies_batch()
    for config in (TaskAugmentConfig(noise_std=0.0), TaskAugmentConfig(**ALL_ON, noise_std=0.0)):
        out = augment_batch(batch, config, torch.Generator().manual_seed(3))
        images, masks = _stacked(out)
        assert torch.equal(images, images[:, :1].expand_as(images))
        assert torch.equal(masks, masks[:, :1].expand_as(masks))
        distinct = {tuple(images[b, 0].flatten()[::97].tolist()) for b in range(len(images))}
        assert len(distinct) > 1  # episodes get different transforms
    original_images, _ = _stacked(batch)
    assert not torch.equal(images, original_images)


def test_flip_and_rot90_are_exact_grid_moves() -> None:
    batch = synthetic_batch(3, 2, 1, 32, torch.Generator().manual_seed(4))
    out = augment_batch(batch, TaskAugmentConfig(**{**ALL_OFF, "flip_p": 1.0}), torch.Generator().manual_seed(0))
    for key in KEYS:
        torch.testing.assert_close(out[key], batch[key].flip(-1), atol=1e-5, rtol=0)
    out = augment_batch(batch, TaskAugmentConfig(**{**ALL_OFF, "rot90_p": 1.0}), torch.Generator().manual_seed(0))
    for b in range(3):
        turns = [torch.rot90(batch["prompt_masks"][b], k, (-2, -1)) for k in (1, 2, 3)]
        assert sum(torch.equal(out["prompt_masks"][b], turned) for turned in turns) == 1


def test_label_inversion_flips_every_mask_of_the_episode() -> None:
    batch = synthetic_batch(3, 4, 1, 32, torch.Generator().manual_seed(5))
    out = augment_batch(batch, TaskAugmentConfig(**{**ALL_OFF, "label_invert_p": 1.0}), torch.Generator())
    assert torch.equal(out["prompt_masks"], 1 - batch["prompt_masks"])
    assert torch.equal(out["query_masks"], 1 - batch["query_masks"])
    assert torch.equal(out["prompt_images"], batch["prompt_images"])
    out = augment_batch(batch, TaskAugmentConfig(**{**ALL_OFF, "intensity_invert_p": 1.0}), torch.Generator())
    torch.testing.assert_close(out["queries"], 1 - batch["queries"])
    assert torch.equal(out["query_masks"], batch["query_masks"])


def test_edge_labels_are_a_thin_band_around_the_boundary() -> None:
    batch = synthetic_batch(4, 3, 1, 64, torch.Generator().manual_seed(6))
    out = augment_batch(batch, TaskAugmentConfig(**{**ALL_OFF, "edge_label_p": 1.0}), torch.Generator())
    (_, before), (_, band) = _stacked(batch), _stacked(out)
    before, band = before.flatten(0, 1), band.flatten(0, 1)
    dilated = F.max_pool2d(before, 3, stride=1, padding=1)
    eroded = 1 - F.max_pool2d(1 - before, 5, stride=1, padding=2)
    assert (band <= dilated).all() and (band * eroded).sum() == 0  # within 1 px outside, 2 px inside
    assert (band.sum((1, 2, 3)) > 0).all() and (band.sum((1, 2, 3)) < before.sum((1, 2, 3))).all()


def test_a_saved_generator_state_reproduces_the_batch() -> None:
    batch = synthetic_batch(4, 3, 1, 48, torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(8)
    state = generator.get_state()
    first = augment_batch(batch, TaskAugmentConfig(), generator)
    second = augment_batch(batch, TaskAugmentConfig(), generator)
    generator.set_state(state)
    again = augment_batch(batch, TaskAugmentConfig(), generator)
    assert all(torch.equal(first[key], again[key]) for key in KEYS)
    assert not all(torch.equal(first[key], second[key]) for key in KEYS)


def test_disabled_augmentation_returns_the_input() -> None:
    batch = synthetic_batch(2, 3, 1, 32, torch.Generator().manual_seed(9))
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    out = augment_batch(batch, TaskAugmentConfig(enabled=False), generator)
    assert all(torch.equal(out[key], batch[key]) for key in KEYS)
    assert torch.equal(generator.get_state(), state)


def test_default_augmentation_rarely_empties_a_query_mask() -> None:
    generator = torch.Generator().manual_seed(10)
    emptied = 0
    for _ in range(10):
        batch = synthetic_batch(8, 2, 1, 48, generator)
        out = augment_batch(batch, TaskAugmentConfig(), generator)
        emptied += int((out["query_masks"].flatten(1).sum(1) == 0).sum())
    assert emptied <= 2


def test_synthetic_batches_hold_consistent_tasks() -> None:
    batch = synthetic_batch(6, 7, 2, 64, torch.Generator().manual_seed(11))
    assert {key: tuple(batch[key].shape) for key in KEYS} == {
        "prompt_images": (6, 7, 1, 64, 64),
        "prompt_masks": (6, 7, 1, 64, 64),
        "queries": (6, 2, 1, 64, 64),
        "query_masks": (6, 2, 1, 64, 64),
    }
    assert all(batch[key].dtype == torch.float32 for key in KEYS)
    images, masks = _stacked(batch)
    assert images.min() >= 0 and images.max() <= 1
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert (masks.mean((2, 3, 4)) >= 0.01).all()
    inside = (images * masks).sum((2, 3, 4)) / masks.sum((2, 3, 4))
    outside = (images * (1 - masks)).sum((2, 3, 4)) / (1 - masks).sum((2, 3, 4))
    sign = torch.sign(inside - outside)
    assert (sign == sign[:, :1]).all() and (sign != 0).all()
    assert (inside.amax(1) - inside.amin(1) < 0.1).all()  # the target intensity belongs to the task
    assert not torch.equal(masks[:, 0], masks[:, 1])  # new instances, not copies


def test_synthetic_batches_are_reproducible() -> None:
    first = synthetic_batch(2, 3, 1, 32, torch.Generator().manual_seed(12))
    again = synthetic_batch(2, 3, 1, 32, torch.Generator().manual_seed(12))
    assert all(torch.equal(first[key], again[key]) for key in KEYS)
