"""Hard synthetic tasks: the layout of the training batches, and that the no-learning prior rule, which solves the
easy synthetic tasks from the prompts' intensities, fails on each hard kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptseg.evaluation.baselines import prior_rule
from promptseg.evaluation.metrics import dice_score
from promptseg.training.synthetic_tasks import HARD_KINDS, hard_synthetic_batch, synthetic_batch

R = 64
EASY_FLOOR = 0.85  # the rule's Dice on easy tasks at N = 8 (bench_hard_tasks.py: 0.943 over 64 episodes)
HARD_CEILING = 0.40  # on each hard kind (bench_hard_tasks.py, N = 8: shape 0.25, texture 0.12, context 0.21)


def _rule_dice(batch: dict[str, torch.Tensor]) -> float:
    """The prior rule's mean Dice over the batch's queries."""
    scores = []
    for i in range(len(batch["queries"])):
        images, masks = batch["prompt_images"][i].numpy(), batch["prompt_masks"][i].numpy()
        predicted = prior_rule(images, masks, batch["queries"][i].numpy()) > 0.5
        truths = batch["query_masks"][i].numpy() > 0.5
        scores += [dice_score(p[0], t[0]) for p, t in zip(predicted, truths, strict=True)]
    return float(np.mean(scores))


def test_hard_batches_have_the_synthetic_layout_and_are_reproducible() -> None:
    batch = hard_synthetic_batch(6, 3, 2, R, torch.Generator().manual_seed(0))
    assert batch["prompt_images"].shape == batch["prompt_masks"].shape == (6, 3, 1, R, R)
    assert batch["queries"].shape == batch["query_masks"].shape == (6, 2, 1, R, R)
    assert all(v.dtype == torch.float32 for v in batch.values())
    assert float(batch["queries"].min()) >= 0 and float(batch["queries"].max()) <= 1
    masks = torch.cat([batch["prompt_masks"], batch["query_masks"]], 1)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    assert (masks.flatten(2).sum(-1) > 0).all()  # every image shows its target
    again = hard_synthetic_batch(6, 3, 2, R, torch.Generator().manual_seed(0))
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    with pytest.raises(ValueError, match="hard task kinds"):
        hard_synthetic_batch(1, 1, 1, R, torch.Generator(), kinds=("colour",))


def test_the_prior_rule_solves_the_easy_tasks() -> None:
    easy = _rule_dice(synthetic_batch(16, 8, 2, R, torch.Generator().manual_seed(1)))
    assert easy > EASY_FLOOR, easy


@pytest.mark.parametrize("kind", HARD_KINDS)
def test_the_prior_rule_fails_on_each_hard_kind(kind: str) -> None:
    hard = _rule_dice(hard_synthetic_batch(16, 8, 2, R, torch.Generator().manual_seed(1), kinds=(kind,)))
    assert hard < HARD_CEILING, (kind, hard)
