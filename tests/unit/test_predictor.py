"""The predictor: native-size results, cached and serialized task encodings, ensembles, several labels, errors, and
the two decisions every caller shares: a request's intensity recipe and the thresholded label map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptseg.inference.errors import InvalidInput
from promptseg.inference.predictor import MODEL_GRID, Predictor, intensity_recipe, label_map
from promptseg.nets.factory import build_model, model_config
from storage.harmonize import NormalizationParams

R = 64


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(build_model(model_config("tiny", R)), device="cpu", batch_size=2)


def _disc_images(count: int, shape: tuple[int, int], seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(count):
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        cy, cx = rng.uniform(0.3, 0.7) * shape[0], rng.uniform(0.3, 0.7) * shape[1]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.15 * min(shape)) ** 2
        images.append((rng.normal(60, 5, shape) + 120 * disc).astype(np.float32))
        masks.append(disc.astype(np.uint8))
    return images, masks


def test_results_come_back_on_each_query_grid(predictor: Predictor) -> None:
    images, masks = _disc_images(3, (70, 90), 0)
    queries = [_disc_images(1, shape, 1)[0][0] for shape in [(80, 60), (50, 100), (64, 64)]]
    results = predictor.segment(predictor.encode_task(images, masks, "MR"), queries, "MR")
    assert [r.probability.shape for r in results] == [(80, 60), (50, 100), (64, 64)]
    for result in results:
        assert result.probability.shape == result.uncertainty.shape
        assert set(np.unique(label_map([result.probability], [1], 0.5))) <= {0, 1}
        assert result.uncertainty.min() >= 0 and result.uncertainty.max() <= 1


def test_batched_queries_equal_one_at_a_time(predictor: Predictor) -> None:
    images, masks = _disc_images(2, (64, 64), 2)
    queries = _disc_images(5, (64, 64), 3)[0]
    task = predictor.encode_task(images, masks, "MR")
    batched = predictor.segment(task, queries, "MR")
    single = [predictor.segment(task, [q], "MR")[0] for q in queries]
    for a, b in zip(batched, single, strict=True):
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-5)


def test_serialized_task_gives_the_same_output(predictor: Predictor) -> None:
    images, masks = _disc_images(4, (64, 64), 4)
    queries = _disc_images(2, (64, 64), 5)[0]
    task = predictor.encode_task(images, masks, "CT")
    restored = predictor.task_from_bytes(task.to_bytes())
    assert restored.n_prompts == 4
    for a, b in zip(predictor.segment(task, queries, "CT"), predictor.segment(restored, queries, "CT"), strict=True):
        np.testing.assert_array_equal(a.probability, b.probability)
    other = Predictor(build_model(model_config("tiny", R, n_max=32)), device="cpu")
    with pytest.raises(InvalidInput, match="different model"):
        other.task_from_bytes(task.to_bytes())
    with pytest.raises(InvalidInput, match="not a serialized task encoding"):
        predictor.task_from_bytes(b"garbage")


def test_ensemble_over_prompt_subsets(predictor: Predictor) -> None:
    images, masks = _disc_images(6, (64, 64), 6)
    queries = _disc_images(2, (64, 64), 7)[0]
    ensemble = Predictor(predictor.network, device="cpu", ensemble=4, seed=1)
    task = ensemble.encode_task(images, masks, "MR")
    assert task.members == 4 and task.n_prompts == 6
    first, again = (
        ensemble.segment(task, queries, "MR"),
        ensemble.segment(ensemble.encode_task(images, masks, "MR"), queries, "MR"),
    )
    np.testing.assert_allclose(first[0].probability, again[0].probability, atol=1e-6)
    single = predictor.segment(predictor.encode_task(images, masks, "MR"), queries, "MR")
    assert not np.allclose(first[0].probability, single[0].probability)


def test_ensembles_do_not_depend_on_prompt_order(predictor: Predictor) -> None:
    """Subsets are drawn from the prompts' content: any order of the same prompts gives the same prediction, and a
    label encoded beside others gets the subsets it gets alone."""
    images, masks = _disc_images(7, (64, 64), 11)
    queries = _disc_images(2, (64, 64), 12)[0]
    ensemble = Predictor(predictor.network, device="cpu", ensemble=5, seed=3)
    first = ensemble.segment(ensemble.encode_task(images, masks, "MR"), queries, "MR")
    for order in ([6, 5, 4, 3, 2, 1, 0], [3, 0, 6, 1, 5, 2, 4]):
        task = ensemble.encode_task([images[i] for i in order], [masks[i] for i in order], "MR")
        assert task.members == 5
        for a, b in zip(first, ensemble.segment(task, queries, "MR"), strict=True):
            np.testing.assert_array_equal(a.probability, b.probability)
    reseeded = Predictor(predictor.network, device="cpu", ensemble=5, seed=4)
    other = reseeded.segment(reseeded.encode_task(images, masks, "MR"), queries, "MR")
    assert not np.allclose(first[0].probability, other[0].probability)  # the seed still picks the subsets
    rings = [np.logical_and(m == 0, np.roll(m, 6, axis=1) == 1).astype(np.uint8) for m in masks]
    together = ensemble.encode_labels(images, {"ring": rings, "disc": masks}, "MR")
    np.testing.assert_allclose(
        ensemble.segment(together["disc"], queries, "MR")[0].probability, first[0].probability, atol=1e-5
    )


def test_several_labels_in_one_call_match_separate_calls(predictor: Predictor) -> None:
    images, discs = _disc_images(3, (64, 64), 8)
    rings = [np.logical_and(m == 0, np.roll(m, 6, axis=1) == 1).astype(np.uint8) for m in discs]
    queries = _disc_images(2, (64, 64), 9)[0]
    tasks = predictor.encode_labels(images, {"disc": discs, "ring": rings}, "MR")
    together = predictor.segment_labels(tasks, queries, "MR")
    for label, masks in {"disc": discs, "ring": rings}.items():
        alone = predictor.segment(predictor.encode_task(images, masks, "MR"), queries, "MR")
        for a, b in zip(together[label], alone, strict=True):
            np.testing.assert_allclose(a.probability, b.probability, atol=1e-5)


def test_bad_input_raises_invalid_input_naming_the_field(predictor: Predictor) -> None:
    images, masks = _disc_images(2, (64, 64), 10)
    with pytest.raises(InvalidInput, match="prompt_images: at least one prompt pair"):
        predictor.encode_task([], [], "MR")
    with pytest.raises(InvalidInput, match="prompt_masks: 2 prompt images but 1 prompt masks"):
        predictor.encode_task(images, masks[:1], "MR")
    with pytest.raises(InvalidInput, match=r"prompt_masks\[1\]: mask is not binary"):
        predictor.encode_task(images, [masks[0], masks[1] * 3], "MR")
    with pytest.raises(InvalidInput, match=r"prompt_masks\[0\]: mask shape"):
        predictor.encode_task(images, [masks[0][:10], masks[1]], "MR")
    nan_image = images[0].copy()
    nan_image[3, 3] = np.nan
    with pytest.raises(InvalidInput, match=r"prompt_images\[0\]: contains NaN"):
        predictor.encode_task([nan_image, images[1]], masks, "MR")
    task = predictor.encode_task(images, masks, "MR")
    with pytest.raises(InvalidInput, match=r"queries\[0\]: contains NaN"):
        predictor.segment(task, [nan_image], "MR")
    with pytest.raises(InvalidInput, match=r"queries\[0\]: model-grid input must be 64×64"):
        predictor.segment(task, [images[0][:32]], MODEL_GRID)
    with pytest.raises(InvalidInput, match="at most 64 prompts"):
        predictor.encode_task(images * 33, masks * 33, "MR")


def test_label_map_takes_the_most_probable_label_above_the_threshold() -> None:
    liver = np.array([[0.9, 0.6, 0.2], [0.1, 0.4, 0.7]])
    kidney = np.array([[0.3, 0.8, 0.1], [0.2, 0.45, 0.75]])
    assert label_map([liver, kidney], [1, 2], 0.5).tolist() == [[1, 2, 0], [0, 0, 2]]
    assert label_map([liver, kidney], [1, 2], 0.85).tolist() == [[1, 0, 0], [0, 0, 0]]
    assert label_map([liver], [3], 0.5).tolist() == [[3, 3, 0], [0, 0, 3]]  # one label: its mask times its value


def test_intensity_recipe_prefers_the_request_then_the_task_then_the_volume() -> None:
    task = NormalizationParams("CT", -160.0, 240.0)
    assert intensity_recipe() == NormalizationParams("CT")
    assert intensity_recipe("MR") == NormalizationParams("MR")
    assert intensity_recipe(None, (0.0, 80.0)) == NormalizationParams("CT", 0.0, 80.0)
    assert intensity_recipe(task=task, volume_modality="MR") == task
    assert intensity_recipe("MR", task=task) == NormalizationParams("MR")  # a modality alone drops the task's window
    assert intensity_recipe(None, (0.0, 80.0), task=task) == NormalizationParams("CT", 0.0, 80.0)
    assert intensity_recipe(volume_modality="MR") == NormalizationParams("MR")
    assert intensity_recipe(None, (0.0, 80.0), volume_modality="CT") == NormalizationParams("CT", 0.0, 80.0)
