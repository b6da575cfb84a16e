"""The episodic sampler on the unit tests' store (`task_store`): labels, hold-outs, case separation, reproducible
state."""

from __future__ import annotations

import pickle

import numpy as np

from pipelines.settings import Settings
from storage.sampler import EpisodeSampler, choose_prompts_and_queries, is_held_out, split_tasks
from storage.task_store import SliceRef, Task, TaskStore


def test_episodes_hold_the_task_label_and_respect_hold_outs(settings: Settings, task_store: TaskStore) -> None:
    store = task_store
    training, held_out = split_tasks(store.tasks(), ["kidney*", "center:center-c"], store.resolution)
    assert not any(t.label_name == "kidney" or t.center == "center-c" for t in training)
    assert {t.center for t in held_out} >= {"center-a", "center-b", "center-c"}
    sampler = EpisodeSampler(store, training, seed=1)
    for _ in range(20):
        episode = sampler.sample(n_prompts=3, n_queries=2)
        assert episode.prompt_images.shape == (3, 1, settings.resolution, settings.resolution)
        assert episode.query_masks.shape == (2, 1, settings.resolution, settings.resolution)
        assert all(mask.sum() > 0 for mask in [*episode.prompt_masks, *episode.query_masks])
        assert "kidney" not in episode.task_id and "center-c" not in episode.task_id


def test_prompts_and_queries_come_from_different_cases_or_far_apart(task_store: TaskStore) -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for task in task_store.tasks()[:40]:
        chosen = choose_prompts_and_queries(task, 2, 1, rng, min_gap=4)
        if chosen is None:
            continue
        prompts, queries = chosen
        if len(task.cases) > 1:
            assert not {p.case for p in prompts} & {q.case for q in queries}, task.task_id
            checked += 1
        else:
            assert all(abs(p.index - q.index) >= 4 for p in prompts for q in queries), task.task_id
    assert checked > 0  # the case separation was put to the test
    single = Task("one-case", 1, "organ", 2, tuple(SliceRef("c", i, i, 10) for i in range(12)))
    prompts, queries = choose_prompts_and_queries(single, 2, 1, rng, min_gap=4)
    assert all(abs(p.index - q.index) >= 4 for p in prompts for q in queries)  # one case: far apart instead
    assert choose_prompts_and_queries(task_store.tasks()[0], 10_000, 1, rng) is None  # cannot supply: skipped


def test_one_slice_cases_give_queries_from_several_cases_and_prompts_from_the_others() -> None:
    """Tiles of a 2D image are one-slice cases: queries gather as many tiles as they need, prompts use the rest."""
    tiles = Task("nuclei", 1, "nucleus", 2, tuple(SliceRef(f"tile{i}", 0, 0, 50) for i in range(8)))
    rng = np.random.default_rng(3)
    for _ in range(10):
        prompts, queries = choose_prompts_and_queries(tiles, 4, 3, rng)
        assert len({q.case for q in queries}) == 3 and len(prompts) == 4
        assert not {p.case for p in prompts} & {q.case for q in queries}
    assert choose_prompts_and_queries(tiles, 6, 3, rng) is None  # 8 tiles cannot give 6 prompts and 3 queries


def test_restored_state_gives_the_same_episodes(settings: Settings, task_store: TaskStore) -> None:
    store = task_store
    training, _ = split_tasks(store.tasks(), settings.training.held_out, store.resolution)
    sampler = EpisodeSampler(store, training, seed=7)
    sampler.sample_batch(2, 4)
    state = sampler.state()
    first = sampler.sample_batch(3, 4)
    sampler.set_state(state)
    again = sampler.sample_batch(3, 4)
    for key in first:
        assert np.array_equal(first[key], again[key])


def test_sampler_travels_to_worker_processes(settings: Settings, task_store: TaskStore) -> None:
    """A pickled sampler (as DataLoader or Ray workers receive it) reopens the store and draws the same episodes."""
    store = TaskStore.open(task_store.url, settings.resolution)
    training, _ = split_tasks(store.tasks(), settings.training.held_out, store.resolution)
    sampler = EpisodeSampler(store, training, seed=11)
    sampler.sample_batch(1, 2)  # open some read handles first
    copy = pickle.loads(pickle.dumps(sampler))
    assert copy.store is not sampler.store and copy.store.url == store.url
    first, second = sampler.sample_batch(2, 3), copy.sample_batch(2, 3)
    assert all(np.array_equal(first[key], second[key]) for key in first)


def test_hold_out_patterns() -> None:
    task = Task("synth-center-b", 2, "kidney", 2, (), "center-b")
    assert is_held_out(task, ["kid*"]) and is_held_out(task, ["center:center-b"])
    assert is_held_out(task, ["task:synth-center-b/kidney/axis2"]) and is_held_out(task, ["dataset:synth-*"])
    assert not is_held_out(task, ["liver", "center:center-a", "dataset:ct-*"])
