"""Self-supervised supervoxel pseudo-tasks (storage.supervoxel_tasks) on a real Zarr task store: which volumes a
training run may cut, and the episodes cut from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from promptseg.training.batches import episode_sampler
from promptseg.training.config import TrainConfig
from storage.sampler import EpisodeSampler
from storage.splits import Splits
from storage.supervoxel_tasks import Stack, SupervoxelTasks, eligible_stacks, longest_run
from storage.task_store import TaskStore

R, SLICES = 32, 24


def _volume(seed: int) -> np.ndarray:
    """A smooth background with three boxes of other intensities, (SLICES, R, R) in [0, 1]."""
    rng = np.random.default_rng(seed)
    volume = np.full((SLICES, R, R), 0.3) + 0.02 * rng.standard_normal((SLICES, R, R))
    for level, (z, y, x) in zip((0.6, 0.8, 0.1), rng.integers(2, 12, size=(3, 3)), strict=True):
        volume[z : z + 12, y : y + 14, x : x + 14] = level
    return volume.clip(0, 1)


def _add(
    store: TaskStore,
    dataset: str,
    center: str,
    labels: dict[int, str],
    cases: dict[str, np.ndarray],
    hashes: dict[str, dict] | None = None,
) -> None:
    """A dataset version of `cases` (name → label stack) with their image hashes (default: one per case)."""
    summaries = []
    for name, label in cases.items():
        indices = list(range(10, 10 + SLICES))
        summary = store.write_case(dataset, f"key-{dataset}-{name}", 2, _volume(len(summaries)), label, indices)
        summaries.append({**summary, "case": name})
    hashes = hashes or {name: {"image": f"{dataset}-{name}", "label": None} for name in cases}
    meta = {"labels": {str(v): n for v, n in labels.items()}, "center": center, "modality": "CT"}
    meta["source_hashes"] = hashes
    store.commit_version(dataset, f"v-{dataset}", meta, summaries)


@pytest.fixture
def store(tmp_path: Path) -> TaskStore:
    store = TaskStore.open(str(tmp_path / "store"), R, create=True)
    organ, kidney = np.zeros((SLICES, R, R), np.uint8), np.zeros((SLICES, R, R), np.uint8)
    organ[4:16, 8:20, 8:20] = 1
    kidney[4:16, 8:20, 8:20] = 2
    _add(store, "train-ds", "c1", {1: "organ", 2: "kidney"}, {"a": organ, "b": kidney})
    _add(store, "held-ds", "c2", {1: "organ"}, {"h": organ})
    _add(store, "archive", "c3", {}, {"u": np.zeros((SLICES, R, R), np.uint8)})  # image-only
    return store


SPLITS = Splits(validation=["kidney*", "dataset:held-ds"], test=[])
HELD_OUT = SPLITS.held_out


def test_only_volumes_without_held_out_structures_are_cut(store: TaskStore) -> None:
    """Case b holds a validation structure and held-ds is a validation dataset: neither is cut; the image-only
    archive and the training case are."""
    assert eligible_stacks(store, HELD_OUT) == [Stack("archive", "u", 2), Stack("train-ds", "a", 2)]


def test_excluded_patterns_are_never_trained_on(store: TaskStore) -> None:
    """A dataset a run excludes (e.g. for an unclear licence) gives neither tasks nor pseudo-tasks to its sampler,
    though no split holds it."""
    config = TrainConfig(
        store_url=store.url,
        resolution=R,
        splits=SPLITS.to_dict(),
        excluded=["dataset:train-ds"],
        self_supervised_share=0.5,
    )
    assert config.held_out == [*HELD_OUT, "dataset:train-ds"]
    assert eligible_stacks(store, config.held_out) == [Stack("archive", "u", 2)]
    with pytest.raises(ValueError, match="no tasks"):  # train-ds held the only training task
        episode_sampler(store, config, rank=0)


def test_pseudo_task_episodes_are_supervoxels_of_eligible_volumes(store: TaskStore) -> None:
    tasks = SupervoxelTasks(store, eligible_stacks(store, HELD_OUT), n_segments=20, min_slices=6)
    rng = np.random.default_rng(0)
    episodes = [tasks.sample(rng, 3, 2) for _ in range(12)]
    for episode in episodes:
        assert episode.prompt_images.shape == episode.prompt_masks.shape == (3, 1, R, R)
        assert episode.query_images.shape == episode.query_masks.shape == (2, 1, R, R)
        assert episode.prompt_images.dtype == np.float16 and episode.query_masks.dtype == np.uint8
        assert all(mask.any() for mask in [*episode.prompt_masks, *episode.query_masks])
        assert episode.task_id.split("/")[0] in {"archive", "train-ds"} and "-supervoxel" in episode.task_id
    assert len({e.task_id for e in episodes}) > 3  # many supervoxels, not one
    again = SupervoxelTasks(store, eligible_stacks(store, HELD_OUT), n_segments=20, min_slices=6)
    rng = np.random.default_rng(0)
    first = again.sample(rng, 3, 2)
    assert np.array_equal(first.query_masks, episodes[0].query_masks) and first.task_id == episodes[0].task_id


def test_queries_keep_their_distance_from_every_prompt_within_one_supervoxel(store: TaskStore) -> None:
    tasks = SupervoxelTasks(store, [Stack("train-ds", "a", 2)], n_segments=20, min_slices=6, min_gap=3)
    cut = tasks.cut(Stack("train-ds", "a", 2))
    assert cut.tasks and cut.labels.shape == cut.images.shape == (SLICES, R, R)
    rng = np.random.default_rng(1)
    for _ in range(20):
        _, task, prompts, queries = tasks.draw(rng, 2, 2)
        assert len(task.slices) >= 6 and task.center == "self-supervised" and task.label_name.startswith("a-")
        assert min(abs(p.index - q.index) for p in prompts for q in queries) >= 3
        assert all((cut.labels[ref.position] == task.label_value).any() for ref in prompts + queries)
    with pytest.raises(ValueError, match="no supervoxel of 1 training volumes gives 30 prompts"):
        tasks.draw(rng, 30, 1)


def test_a_held_out_scan_ingested_again_as_an_image_only_case_is_not_cut(store: TaskStore, tmp_path: Path) -> None:
    """The same image file as a validation case (case b holds a kidney) in an unlabelled archive stays uncut."""
    info = store.version_info("train-ds")
    copied = {"copy": {"image": info["source_hashes"]["b"]["image"], "label": None}}
    _add(store, "second-archive", "c4", {}, {"copy": np.zeros((SLICES, R, R), np.uint8)}, copied)
    assert Stack("second-archive", "copy", 2) not in eligible_stacks(store, HELD_OUT)


def test_the_sampler_mixes_pseudo_tasks_at_its_share(store: TaskStore) -> None:
    training = [t for t in store.tasks() if SPLITS.split_of(t) == "training"]
    pseudo = SupervoxelTasks(store, eligible_stacks(store, HELD_OUT), n_segments=20, min_slices=6)
    sampler = EpisodeSampler(store, training, seed=0, pseudo=pseudo, pseudo_share=0.5)
    names = [sampler.sample(2).task_id for _ in range(40)]
    share = np.mean(["supervoxel" in name for name in names])
    assert 0.25 < share < 0.75 and "train-ds/organ/axis2" in names
    plain = EpisodeSampler(store, training, seed=0)
    assert all("supervoxel" not in plain.sample(2).task_id for _ in range(10))


def test_longest_run_of_consecutive_indices() -> None:
    assert longest_run([3, 4, 5, 9, 10]) == slice(0, 3)
    assert longest_run([1, 3, 4, 5, 6]) == slice(1, 5)
    assert longest_run([]) == slice(0, 0)
