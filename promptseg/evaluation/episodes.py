"""Evaluation episodes: prompts, queries with and without the structure, and the prompt-use controls.

For a task, N and a resample, `draw_episode` picks prompts and query slices with `storage.sampler`
(queries from other cases than the prompts', or `min_gap` slices away in a single-volume dataset), adds up to
`empty_queries` slices of the query cases that do not show the structure (so false positives are scored), and
builds three controls on the same queries, each a replacement set of prompts:

- `other_structure`: prompts (images and masks) of another structure of the same dataset and axis, else of
  another dataset of the same modality; absent when neither exists (e.g. the nuclei, the only microscopy dataset);
- `shuffled_masks`: the prompt images with the masks of other slices of the same structure;
- `empty_masks`: the prompt images with empty masks.

A model that reads its prompts must fall towards zero on each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from storage.sampler import Episode, choose_prompts_and_queries, read_episode
from storage.task_store import SliceRef, Task, TaskStore

CONTROLS = ("other_structure", "shuffled_masks", "empty_masks")


@dataclass
class EvalEpisode:
    """An episode (queries: those showing the structure, then the empty ones), the query slices, and each
    control's prompt images and masks (N, 1, R, R)."""

    episode: Episode
    query_refs: list[SliceRef]
    controls: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def control_pool(task: Task, candidates: list[Task], modality: dict[str, str]) -> list[Task]:
    """The tasks whose prompts the `other_structure` control may give for `task`: other structures of its dataset
    along its axis, else tasks of other datasets with its modality along its axis."""
    same = [
        t for t in candidates if t.dataset == task.dataset and t.axis == task.axis and t.label_name != task.label_name
    ]
    if same:
        return same
    return [
        t
        for t in candidates
        if t.dataset != task.dataset and t.axis == task.axis and modality.get(t.dataset) == modality.get(task.dataset)
    ]


def _empty_queries(
    store: TaskStore,
    task: Task,
    prompts: list[SliceRef],
    queries: list[SliceRef],
    count: int,
    rng: np.random.Generator,
    min_gap: int,
) -> list[SliceRef]:
    """Up to `count` slices of the query cases without the structure, `min_gap` away from prompts of the same case."""
    if count < 1:
        return []
    pool = [
        ref
        for case in sorted({q.case for q in queries})
        for ref in store.absent_slices(task, case)
        if all(p.case != case or abs(p.index - ref.index) >= min_gap for p in prompts)
    ]
    if not pool:
        return []
    return [pool[i] for i in rng.choice(len(pool), min(count, len(pool)), replace=False)]


def draw_episode(
    store: TaskStore,
    task: Task,
    n_prompts: int,
    n_queries: int,
    n_empty: int,
    rng: np.random.Generator,
    min_gap: int,
    others: list[Task],
    with_controls: bool = True,
) -> EvalEpisode | None:
    """One evaluation episode as the module docstring says (the controls only `with_controls`; they are drawn after
    the episode, so it is the same either way); None when the task cannot supply N prompts and the queries."""
    chosen = choose_prompts_and_queries(task, n_prompts, n_queries, rng, min_gap)
    if chosen is None:
        return None
    prompts, queries = chosen
    queries = queries + _empty_queries(store, task, prompts, queries, n_empty, rng, min_gap)
    episode = read_episode(store, task, prompts, queries)
    controls: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if not with_controls:
        return EvalEpisode(episode, queries, controls)
    if others:
        other = others[rng.integers(len(others))]
        picked = choose_prompts_and_queries(other, n_prompts, 1, rng, min_gap)
        if picked is not None:
            images, masks = store.read_slices(other, picked[0])
            controls["other_structure"] = (images[:, None], masks[:, None])
    used = {(ref.case, ref.position) for ref in prompts + queries}
    spare = [ref for ref in task.slices if (ref.case, ref.position) not in used]
    if len(spare) >= n_prompts:
        swapped = [spare[i] for i in rng.choice(len(spare), n_prompts, replace=False)]
        controls["shuffled_masks"] = (episode.prompt_images, store.read_slices(task, swapped)[1][:, None])
    controls["empty_masks"] = (episode.prompt_images, np.zeros_like(episode.prompt_masks))
    return EvalEpisode(episode, queries, controls)
