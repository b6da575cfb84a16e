"""What a training batch is made of: store episodes of the training tasks (and, with `self_supervised_share`,
supervoxel pseudo-tasks of the training volumes: storage.supervoxel_tasks), or synthetic tasks (easy, and with
`hard_synthetic_share` the kind intensity cannot solve: promptseg.training.synthetic_tasks), then the task
augmentation. All randomness comes from the sampler's state and the augmentation generator, both saved in
checkpoints; with both shares at 0 nothing is drawn for them, so the random streams are those of earlier runs."""

from __future__ import annotations

import torch

from promptseg.training.config import TrainConfig
from promptseg.training.synthetic_tasks import hard_synthetic_batch, synthetic_batch
from promptseg.training.task_augment import TaskAugmentConfig, augment_batch
from storage.sampler import EpisodeSampler, split_tasks
from storage.supervoxel_tasks import Stack, SupervoxelTasks, eligible_stacks
from storage.task_store import Task, TaskStore


def episode_sampler(store: TaskStore, config: TrainConfig, rank: int) -> EpisodeSampler:
    """This rank's sampler of the training tasks, with the pseudo-tasks where the config asks for them."""
    training_tasks, _ = split_tasks(store.tasks(), config.held_out, store.resolution)
    pseudo = None
    if config.self_supervised_share:
        pseudo = SupervoxelTasks(store, eligible_stacks(store, config.held_out))
    return EpisodeSampler(store, training_tasks, config.seed * 1000 + rank, pseudo, config.self_supervised_share)


def dataset_licences(store: TaskStore, tasks: list[Task], stacks: list[Stack]) -> dict[str, str]:
    """Each dataset a run learns from (its training tasks' and the volumes it may cut for self-supervised tasks) →
    the licence its source stated at ingest ("not stated" when none): what the model card lists."""
    names = {task.dataset for task in tasks} | {stack.dataset for stack in stacks}
    return {name: store.version_info(name).get("licence") or "not stated" for name in sorted(names)}


def training_batch(
    sampler: EpisodeSampler, generator: torch.Generator, config: TrainConfig, device: torch.device
) -> dict[str, torch.Tensor]:
    """A batch of store episodes, or (with probability `synthetic_fraction`) of synthetic tasks, with the task
    augmentation applied on `device`."""
    if torch.rand(1, generator=generator).item() < config.synthetic_fraction:
        n_prompts = int(torch.randint(1, config.max_prompts + 1, (1,), generator=generator))
        hard = config.hard_synthetic_share and torch.rand(1, generator=generator).item() < config.hard_synthetic_share
        make = hard_synthetic_batch if hard else synthetic_batch
        batch = make(config.batch_size, n_prompts, 1, config.resolution, generator)
    else:
        arrays = sampler.sample_batch(config.batch_size, config.max_prompts)
        batch = {key: torch.from_numpy(value) for key, value in arrays.items()}
    batch = {key: value.to(device).float() for key, value in batch.items()}
    return augment_batch(batch, TaskAugmentConfig(**config.augment), generator)
