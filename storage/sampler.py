"""Episodic sampling from the task store: a task, N prompt slices and query slices of the same structure.

Queries come from cases other than the prompts' when the task spans several cases (one case, or as few as give
enough query slices, e.g. the one-slice tiles of a 2D image); otherwise they are at least `min_gap` slices away
from every prompt, so a model cannot copy a neighbouring prompt. The sampler's
random state is part of a training checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fnmatch import fnmatch
from typing import Protocol

import numpy as np

from storage.task_store import SliceRef, Task, TaskStore


@dataclass
class Episode:
    """Arrays in the model's layout without the batch axis: (N, 1, R, R) prompts, (Q, 1, R, R) queries.

    Images are float16 as stored, masks uint8; models take them as float tensors."""

    task_id: str
    prompt_images: np.ndarray
    prompt_masks: np.ndarray
    query_images: np.ndarray
    query_masks: np.ndarray


MIN_FOREGROUND_FRACTION = 1e-3


def is_held_out(task: Task, patterns: list[str]) -> bool:
    """Whether a hold-out pattern names the task: `label:`, `task:`, `dataset:` or `center:` followed by a
    shell-style pattern; a bare pattern matches the label name (e.g. `kidney*`)."""
    fields = {"label": task.label_name, "task": task.task_id, "dataset": task.dataset, "center": task.center}
    for pattern in patterns:
        kind, _, value = pattern.partition(":") if pattern.split(":", 1)[0] in fields else ("", "", pattern)
        if fnmatch(fields[kind or "label"], value):
            return True
    return False


def split_tasks(tasks: list[Task], held_out: list[str], resolution: int | None = None) -> tuple[list[Task], list[Task]]:
    """(training tasks, held-out tasks) under the hold-out patterns of `is_held_out`.

    With `resolution`, slices whose structure covers less than MIN_FOREGROUND_FRACTION of the image are
    dropped (a few pixels carry no usable prompt), and tasks left with fewer than two slices with them.
    """
    if resolution is not None:
        least = MIN_FOREGROUND_FRACTION * resolution**2
        tasks = [replace(t, slices=tuple(s for s in t.slices if s.foreground >= least)) for t in tasks]
        tasks = [t for t in tasks if len(t.slices) >= 2]
    flags = [is_held_out(task, held_out) for task in tasks]
    return (
        [t for t, h in zip(tasks, flags, strict=True) if not h],
        [t for t, h in zip(tasks, flags, strict=True) if h],
    )


def choose_prompts_and_queries(
    task: Task, n_prompts: int, n_queries: int, rng: np.random.Generator, min_gap: int = 3
) -> tuple[list[SliceRef], list[SliceRef]] | None:
    """Pick disjoint prompt and query slices as the module docstring says; None if the task cannot supply them."""
    slices = list(task.slices)
    cases = task.cases
    if len(cases) > 1:
        query_cases = {cases[rng.integers(len(cases))]}
        if sum(s.case in query_cases for s in slices) < n_queries:  # e.g. one slice per case: tiles of a 2D image
            for index in rng.permutation(len(cases)):
                query_cases.add(cases[index])
                if sum(s.case in query_cases for s in slices) >= n_queries:
                    break
        query_pool = [s for s in slices if s.case in query_cases]
        prompt_pool = [s for s in slices if s.case not in query_cases]
    else:
        query_pool = slices
        prompt_pool = []
    if len(query_pool) < n_queries:
        return None
    queries = [query_pool[i] for i in rng.choice(len(query_pool), n_queries, replace=False)]
    if len(cases) == 1:
        prompt_pool = [s for s in slices if all(abs(s.index - q.index) >= min_gap for q in queries)]
    if len(prompt_pool) < n_prompts:
        return None
    prompts = [prompt_pool[i] for i in rng.choice(len(prompt_pool), n_prompts, replace=False)]
    return prompts, queries


def read_episode(store: TaskStore, task: Task, prompts: list[SliceRef], queries: list[SliceRef]) -> Episode:
    """Read an episode's arrays from the store."""
    images, masks = store.read_slices(task, prompts + queries)
    images, masks = images[:, None], masks[:, None]
    n = len(prompts)
    return Episode(task.task_id, images[:n], masks[:n], images[n:], masks[n:])


class PseudoTasks(Protocol):
    """A source of self-supervised episodes (storage.supervoxel_tasks.SupervoxelTasks)."""

    def sample(self, rng: np.random.Generator, n_prompts: int, n_queries: int = 1) -> Episode: ...


class EpisodeSampler:
    """Draws training episodes: a dataset uniformly, then one of its tasks, then prompts and queries; with `pseudo`,
    a `pseudo_share` of the episodes are self-supervised pseudo-tasks instead."""

    def __init__(
        self, store: TaskStore, tasks: list[Task], seed: int, pseudo: PseudoTasks | None = None, pseudo_share: float = 0
    ) -> None:
        if not tasks:
            raise ValueError("no tasks to sample from")
        self.store, self.pseudo, self.pseudo_share = store, pseudo, pseudo_share
        self.rng = np.random.default_rng(seed)
        self._by_dataset: dict[str, list[Task]] = {}
        for task in tasks:
            self._by_dataset.setdefault(task.dataset, []).append(task)
        self._datasets = sorted(self._by_dataset)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def sample(self, n_prompts: int, n_queries: int = 1) -> Episode:
        if self.pseudo is not None and self.rng.random() < self.pseudo_share:
            return self.pseudo.sample(self.rng, n_prompts, n_queries)
        while True:
            dataset = self._datasets[self.rng.integers(len(self._datasets))]
            candidates = self._by_dataset[dataset]
            task = candidates[self.rng.integers(len(candidates))]
            chosen = choose_prompts_and_queries(task, n_prompts, n_queries, self.rng)
            if chosen is not None:
                return read_episode(self.store, task, *chosen)

    def sample_batch(self, batch_size: int, max_prompts: int, n_queries: int = 1) -> dict[str, np.ndarray]:
        """A batch of episodes sharing one prompt count N drawn from 1..max_prompts."""
        n_prompts = int(self.rng.integers(1, max_prompts + 1))
        episodes = [self.sample(n_prompts, n_queries) for _ in range(batch_size)]
        return {
            "prompt_images": np.stack([e.prompt_images for e in episodes]),
            "prompt_masks": np.stack([e.prompt_masks for e in episodes]),
            "queries": np.stack([e.query_images for e in episodes]),
            "query_masks": np.stack([e.query_masks for e in episodes]),
        }
