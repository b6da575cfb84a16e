"""The evaluation's parts without a trained model: the splits, the prior rule, the episodes with empty queries and
controls (on the unit tests' store), and the scoring with bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from promptseg.evaluation.baselines import prior_rule
from promptseg.evaluation.episodes import control_pool, draw_episode
from promptseg.evaluation.metrics import dice_score
from promptseg.evaluation.report import EpisodeScore, eval_spec
from promptseg.evaluation.scoring import over_resamples, paired_difference, score_episode
from storage.splits import Splits
from storage.task_store import TaskStore


def _disc_images(count: int, rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images (count, 1, size, size) with a bright disc at a jittered place, and its masks."""
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for _ in range(count):
        cy, cx = rng.integers(12, 20, size=2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 25
        images.append(np.clip(0.3 + 0.4 * mask + rng.normal(0, 0.03, mask.shape), 0, 1))
        masks.append(mask)
    return np.array(images, np.float32)[:, None], np.array(masks, np.uint8)[:, None]


def test_the_prior_rule_segments_by_prompt_intensity_and_place_without_learning() -> None:
    rng = np.random.default_rng(0)
    prompts, masks = _disc_images(4, rng)
    queries, truths = _disc_images(3, rng)
    probabilities = prior_rule(prompts, masks, queries)
    assert probabilities.shape == queries.shape and probabilities.dtype == np.float32
    assert min(dice_score(p[0] > 0.5, t[0]) for p, t in zip(probabilities, truths, strict=True)) > 0.8
    order = rng.permutation(4)
    assert np.array_equal(prior_rule(prompts[order], masks[order], queries), probabilities)  # order-free
    one = prior_rule(prompts[:1], masks[:1], queries)
    assert (one[:, 0] > 0.5)[truths[:, 0] & ~masks[0, 0].astype(bool)[None]].any()  # N=1 reaches past its mask
    empty = prior_rule(prompts, np.zeros_like(masks), queries)
    assert (empty > 0.5).mean() < 0.05  # next to nothing to segment without a mask


def test_default_splits_hold_out_whole_centers_and_are_disjoint(task_store: TaskStore) -> None:
    splits = Splits()
    tasks = task_store.tasks()
    parts = {name: splits.tasks(tasks, name, task_store.resolution) for name in ("training", "validation", "test")}
    assert {t.center for t in parts["training"]} == {"center-a"}
    assert {t.center for t in parts["validation"]} == {"center-b"} and {t.center for t in parts["test"]} == {"center-c"}
    ids = [{t.task_id for t in part} for part in parts.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    with pytest.raises(ValueError, match="unknown split"):
        splits.tasks(tasks, "train", task_store.resolution)
    spec = eval_spec("quick", splits, "test")
    assert spec.held_out == splits.test and spec.splits == splits.to_dict()
    with pytest.raises(ValueError, match="validation or the test split"):
        eval_spec("quick", splits, "training")


def test_episodes_add_empty_queries_and_the_three_controls(task_store: TaskStore) -> None:
    splits = Splits()
    candidates = splits.tasks(task_store.tasks(), "validation", task_store.resolution)
    task = next(t for t in candidates if t.axis == 2 and t.label_name == "kidney")
    others = control_pool(task, candidates, {})
    assert others and all(t.dataset == task.dataset and t.label_name != "kidney" for t in others)
    drawn = draw_episode(task_store, task, 3, 2, 2, np.random.default_rng(0), 3, others)
    assert drawn is not None
    masks = drawn.episode.query_masks[:, 0]
    shows = masks.reshape(len(masks), -1).any(axis=1)
    assert shows[:2].all() and len(masks) > 2 and not shows[2:].any()  # then slices without the structure
    assert {ref.case for ref in drawn.query_refs[2:]} <= {ref.case for ref in drawn.query_refs[:2]}
    assert set(drawn.controls) == {"other_structure", "shuffled_masks", "empty_masks"}
    images, shuffled = drawn.controls["shuffled_masks"]
    assert np.array_equal(images, drawn.episode.prompt_images) and not np.array_equal(
        shuffled, drawn.episode.prompt_masks
    )
    assert not drawn.controls["empty_masks"][1].any()
    other_images, other_masks = drawn.controls["other_structure"]
    assert other_masks.any() and not np.array_equal(other_images, drawn.episode.prompt_images)


def test_empty_queries_score_false_positives_and_the_empty_convention() -> None:
    truth = np.zeros((3, 8, 8), np.uint8)
    truth[0, 2:5, 2:5] = 1
    prediction = np.zeros((3, 8, 8), np.float32)
    prediction[0, 2:5, 2:5] = 0.9
    prediction[1, 0, 0] = 0.9  # a false positive on the first empty query
    scores = score_episode(prediction, truth, [1.0, 1.0, 1.0])
    assert scores["dice"] == 1.0 and scores["empty_queries"] == 2 and scores["fp_rate"] == 0.5
    assert scores["dice_with_empty"] == pytest.approx(2 / 3)
    assert math.isnan(score_episode(prediction[:1], truth[:1], [1.0])["fp_rate"])


def _rows(method: str, per_task: dict[str, list[float]]) -> list[EpisodeScore]:
    return [
        EpisodeScore(
            task=task, label=task, dataset="d", center="c", n_prompts=1, resample=i, method=method,
            query_cases=[], dice=value, iou=value, hd95=0.0, per_query_dice=[value], empty_queries=0,
            fp_rate=math.nan, dice_with_empty=value,
        )
        for task, values in per_task.items()
        for i, value in enumerate(values)
    ]  # fmt: skip


def test_cells_have_bootstrap_intervals_over_tasks_and_paired_differences() -> None:
    rng = np.random.default_rng(1)
    model = {f"t{i}": list(rng.uniform(0.5, 0.9, 3)) for i in range(20)}
    rule = {task: [v - 0.05 for v in values] for task, values in model.items()}
    rows = _rows("model", model) + _rows("rule", rule)
    cell = over_resamples([r for r in rows if r.method == "model"], "dice", 2000, 0)
    assert cell.tasks == 20 and cell.count == 60 and cell.ci_low < cell.mean < cell.ci_high
    narrow = over_resamples(_rows("model", {t: [0.7] * 3 for t in model}), "dice", 2000, 0)
    assert narrow.ci_high - narrow.ci_low < 1e-9 and narrow.sd < 1e-9
    difference = paired_difference(rows, "model", "rule", "dice", 2000, 0)
    assert difference.mean == pytest.approx(0.05) and difference.ci_low == pytest.approx(0.05)  # same gap each task
    one_task = over_resamples(_rows("model", {"t0": [0.5, 0.7]}), "dice")
    assert one_task.mean == pytest.approx(0.6) and math.isnan(one_task.ci_low)  # no interval from one task


def test_headline_scores_are_valid_mlflow_keys() -> None:
    """Scores are logged as MLflow metrics and version tags, whose keys allow no `+` (the controls' separator)."""
    from mlflow.utils.validation import _validate_metric_name, _validate_tag_name

    from promptseg.evaluation.report import EvaluationReport, Stat

    cell = {"8": {"dice": Stat(mean=0.5, sd=0.0, count=1, tasks=1)}}
    report = EvaluationReport.model_construct(summary={"promptseg": cell, "promptseg+empty_masks": cell})
    assert set(report.headline_scores()) == {"dice_promptseg_n8", "dice_promptseg_with_empty_masks_n8"}
    for key in report.headline_scores():
        _validate_metric_name(f"validation_{key}")
        _validate_tag_name(f"heldout_{key}")
