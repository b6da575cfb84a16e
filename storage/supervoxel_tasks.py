"""Self-supervised pseudo-tasks from the training split's volumes, labelled or not (after SSL-ALPNet, Ouyang et al.
2020): supervoxels stand in for structures, so that a hospital's unlabelled archive adds training tasks.

- `eligible_stacks`: the (dataset, case, axis) stacks a training run may cut: cases of datasets its held-out
  patterns (the validation and test splits', and any it excludes, e.g. for an unclear licence) do not name as a
  whole (`dataset:` or `center:` patterns), and never a held-out volume: one that holds a slice of a held-out task,
  or whose image file is byte for byte one of those (the same scan ingested again, e.g. in an image-only archive).
  Image-only datasets (ingested with `labelled: false`) have no tasks, so every case of theirs is eligible unless
  their dataset or center is held out or its image is a held-out one.
- `supervoxels`: SLIC (scikit-image) on one stack: the case's stored slices along one axis, in order, on the model
  grid. A labelled dataset stores its labelled slices and a share of the empty ones, so a stack is the longest run of
  consecutive slice indices.
- `SupervoxelTasks.draw`: stacks in random order, then their supervoxels that span `min_slices` slices with enough
  pixels in random order, until one gives the prompts and the queries as for a single-volume task (queries at least
  `min_gap` slices from every prompt; storage.sampler). Supervoxels are computed on first use and kept in memory
  (float16 images, uint16 labels). A pseudo-task's `SliceRef.position` is the slice's place in its stack's run, not
  in the store: these tasks never reach `TaskStore.read_slices`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.sampler import MIN_FOREGROUND_FRACTION, Episode, choose_prompts_and_queries, is_held_out
from storage.task_store import SliceRef, Task, TaskStore


@dataclass(frozen=True)
class Stack:
    dataset: str
    case: str
    axis: int


def eligible_stacks(store: TaskStore, held_out: list[str]) -> list[Stack]:
    """The stacks of the module docstring under the `held_out` task patterns (storage.sampler.is_held_out), in a
    stable order."""
    held_out_cases = {
        (task.dataset, ref.case) for task in store.tasks() if is_held_out(task, held_out) for ref in task.slices
    }
    infos = {dataset: store.version_info(dataset) for dataset in store.datasets()}
    held_out_images = {
        infos[dataset].get("source_hashes", {}).get(case, {}).get("image") for dataset, case in held_out_cases
    } - {None}
    stacks = []
    for dataset, info in infos.items():
        whole = Task(dataset, 0, "", 0, (), info.get("center", dataset))
        if is_held_out(whole, held_out):
            continue
        hashes = info.get("source_hashes", {})
        for case, entry in sorted(info["cases"].items()):
            if (dataset, case) in held_out_cases or hashes.get(case, {}).get("image") in held_out_images:
                continue
            stacks += [Stack(dataset, case, int(axis)) for axis in sorted(entry["axes"])]
    return stacks


def longest_run(indices: list[int]) -> slice:
    """The positions of the longest run of consecutive values in sorted `indices` (the first such run)."""
    best, start = (0, 0), 0
    for position in range(1, len(indices) + 1):
        if position == len(indices) or indices[position] != indices[position - 1] + 1:
            if position - start > best[1] - best[0]:
                best = (start, position)
            start = position
    return slice(*best)


def supervoxels(volume: np.ndarray, n_segments: int = 60, compactness: float = 0.1) -> np.ndarray:
    """Labels 1..K (uint16) of SLIC supervoxels of a (S, R, R) stack with intensities in [0, 1]."""
    from skimage.segmentation import slic  # only training with pseudo-tasks needs scikit-image loaded

    labels = slic(
        volume.astype(np.float32), n_segments=n_segments, compactness=compactness, channel_axis=None, start_label=1
    )
    return labels.astype(np.uint16)


@dataclass(frozen=True)
class CutStack:
    images: np.ndarray  # (S, R, R) float16, the stack's longest run
    labels: np.ndarray  # (S, R, R) uint16 supervoxels
    tasks: list[Task]  # one per supervoxel that spans `min_slices` slices


class SupervoxelTasks:
    """Pseudo-tasks from `stacks` of `store`; every random choice comes from the caller's generator."""

    def __init__(
        self, store: TaskStore, stacks: list[Stack], n_segments: int = 60, min_slices: int = 6, min_gap: int = 3
    ) -> None:
        if not stacks:
            raise ValueError("no training volume to cut into self-supervised tasks")
        self.store, self.stacks = store, stacks
        self.n_segments, self.min_slices, self.min_gap = n_segments, min_slices, min_gap
        self._cut: dict[Stack, CutStack] = {}

    def cut(self, stack: Stack) -> CutStack:
        """The stack's images, supervoxels and pseudo-tasks, computed on first use."""
        if stack not in self._cut:
            indices, images = self.store.read_case(stack.dataset, stack.case, stack.axis)
            run = longest_run(indices)
            images, indices = images[run], indices[run]
            labels = supervoxels(images, self.n_segments) if len(images) else np.zeros(images.shape, np.uint16)
            least = MIN_FOREGROUND_FRACTION * images.shape[-1] ** 2
            tasks = []
            largest = int(labels.max(initial=0))
            sizes_per_slice = np.zeros((len(labels), largest + 1), np.int64)  # (S, K + 1) pixels per supervoxel
            for position, labelled in enumerate(labels):
                sizes_per_slice[position] = np.bincount(labelled.ravel(), minlength=largest + 1)
            for value in np.flatnonzero(sizes_per_slice[:, 1:].any(axis=0)) + 1:
                sizes = sizes_per_slice[:, value]
                refs = tuple(
                    SliceRef(stack.case, position, indices[position], int(size))
                    for position, size in enumerate(sizes)
                    if size >= least
                )
                if len(refs) >= self.min_slices:
                    name = f"{stack.case}-supervoxel{value}"
                    tasks.append(Task(stack.dataset, int(value), name, stack.axis, refs, "self-supervised"))
            self._cut[stack] = CutStack(images, labels, tasks)
        return self._cut[stack]

    def draw(
        self, rng: np.random.Generator, n_prompts: int, n_queries: int
    ) -> tuple[Stack, Task, list[SliceRef], list[SliceRef]]:
        """A stack, a pseudo-task of it, its prompt and its query slices, as the module docstring says."""
        for stack_index in rng.permutation(len(self.stacks)):
            stack = self.stacks[stack_index]
            tasks = self.cut(stack).tasks
            for task_index in rng.permutation(len(tasks)):
                chosen = choose_prompts_and_queries(tasks[task_index], n_prompts, n_queries, rng, self.min_gap)
                if chosen is not None:
                    return stack, tasks[task_index], *chosen
        raise ValueError(
            f"no supervoxel of {len(self.stacks)} training volumes gives {n_prompts} prompts and {n_queries} queries"
        )

    def sample(self, rng: np.random.Generator, n_prompts: int, n_queries: int = 1) -> Episode:
        """One pseudo-task episode in the layout of `storage.sampler.Episode` (images float16, masks uint8)."""
        stack, task, prompts, queries = self.draw(rng, n_prompts, n_queries)
        cut = self.cut(stack)

        def arrays(refs: list[SliceRef]) -> tuple[np.ndarray, np.ndarray]:
            positions = [ref.position for ref in refs]
            return cut.images[positions, None], (cut.labels[positions, None] == task.label_value).astype(np.uint8)

        return Episode(task.task_id, *arrays(prompts), *arrays(queries))
