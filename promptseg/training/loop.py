"""Training PromptSeg with Ray Train: a TorchTrainer whose workers (DDP; gloo on CPU, NCCL on GPU) each draw
their own episodes from the task store, report metrics and checkpoints through `ray.train.report`, and log to
MLflow from rank 0 only. The driver opens the MLflow run, records lineage (store snapshot, fingerprints, git
commit, held-out spec, system) and keeps the final checkpoint.

A checkpoint every `checkpoint_every` steps holds everything needed to continue exactly: weights, optimizer,
scheduler, step and every rank's random states (torch, numpy, Python, the sampler's, the augmentation's). After a
worker dies, Ray Train restarts the workers from the last checkpoint (`max_failures`); a later run with the same
name and `resume=True` continues it. `fail_after_checkpoint` injects a worker crash for tests. Rank 0 sends its
progress to the driver, which logs it (promptseg.training.progress).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import ray.train
import torch
from pydantic import BaseModel, ConfigDict
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, prepare_model

from promptseg.nets.checkpoint import load_model, save_model
from promptseg.nets.factory import build_model, load_pretrained_encoder, model_config
from promptseg.nets.losses import segmentation_loss
from promptseg.registry.tracking import (
    RunLog,
    find_run,
    git_commit,
    load_run_dict,
    mlflow_version,
    open_run,
    use_experiment,
)
from promptseg.training.batches import dataset_licences, episode_sampler, training_batch
from promptseg.training.config import TrainConfig
from promptseg.training.progress import QUEUE_KEY, ProgressTicker, following
from promptseg.training.trainer_state import load_trainer_state, save_trainer_state
from storage.fingerprint import fingerprint_hash
from storage.preparation import preparation_tags
from storage.sampler import EpisodeSampler, split_tasks
from storage.splits import Splits
from storage.supervoxel_tasks import eligible_stacks
from storage.task_store import TaskStore

CONFIG_ARTIFACT = "train_config.json"


class TrainingResult(BaseModel):
    """A finished training run: its MLflow run, its final checkpoint folder and last loss (averaged over workers)."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    run_name: str
    checkpoint_dir: Path
    final_loss: float


def _learning_rate_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class TrainingFailedError(RuntimeError):
    """A training run failed more often than `max_failures` allows (resume it by name)."""


class RunNameError(ValueError):
    """A run name that is taken (without `resume`) or unknown (with `resume`)."""


def _random_states(sampler: EpisodeSampler, generator: torch.Generator) -> dict:
    """This rank's every random state: what drawing the next batch and the next step depend on."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
        "sampler": sampler.state(),
        "augment": generator.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _numpy_state() -> tuple:
    """numpy's global state as plain Python values (checkpoints load with torch's weights_only)."""
    name, key, *rest = np.random.get_state()
    return (name, key.tolist(), *rest)


def _restore_random_states(state: dict, sampler: EpisodeSampler, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    name, key, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), *rest))
    random.setstate(state["python"])
    sampler.set_state(state["sampler"])
    generator.set_state(state["augment"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def train_loop_per_worker(raw_config: dict) -> None:
    """The loop every Ray Train worker runs; rank 0 also sends progress to the driver's queue."""
    config = TrainConfig(**{k: v for k, v in raw_config.items() if k != QUEUE_KEY})
    torch.set_num_threads(config.threads_per_worker)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    store = TaskStore.open(config.store_url, config.resolution)
    sampler = episode_sampler(store, config, rank)
    _seed_everything(config.seed)
    network = build_model(model_config(config.size, config.resolution, config.n_max, config.bottleneck, config.priors))
    if config.pretrained_encoder:
        load_pretrained_encoder(network, Path(config.pretrained_encoder))
    if config.init_weights:
        network.load_state_dict(load_model(Path(config.init_weights)).state_dict())
    _seed_everything(config.seed * 1000 + rank)
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank + 1)
    model = prepare_model(network)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.scaled_lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _learning_rate_factor(step, config))
    tracker = RunLog(config.tracking_uri, config.run_id) if rank == 0 and config.run_id else None
    nodes = [state["node"] for state in _gather({"node": ray.get_runtime_context().get_node_id()}, world)]
    if tracker is not None:
        tracker.set_tags({"worker_nodes": ",".join(nodes)})  # the Ray node of each rank
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            network.load_state_dict(load_model(Path(folder)).state_dict())
            state = load_trainer_state(Path(folder))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
        _restore_random_states(state["random_states"][rank], sampler, generator)
        if tracker is not None:
            tracker.log_metrics({"resumed_from_step": start}, step=start)
    crash_at = config.fail_after_checkpoint * config.checkpoint_every + config.checkpoint_every // 2
    losses: list[float] = []  # this worker's loss per step since the last report
    stamps: list[int] = []  # and when each step ended (ms)
    model.train()
    queue = raw_config.get(QUEUE_KEY) if rank == 0 else None
    ticker = ProgressTicker(queue, config.steps, config.global_batch_size, start) if queue is not None else None
    for step in range(start, config.steps):
        if config.fail_after_checkpoint and checkpoint is None and rank == world - 1 and step == crash_at:
            _die_after_committed_checkpoint()
        batch = training_batch(sampler, generator, config, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits, kl = model(batch["prompt_images"], batch["prompt_masks"], batch["queries"], return_kl=True)
        loss = segmentation_loss(logits.float(), batch["query_masks"]) + config.kl_weight * kl.float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        stamps.append(int(time.time() * 1000))
        if ticker is not None:
            ticker.step_done(step + 1, losses[-1])
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            states = _gather(_random_states(sampler, generator), world)
            averaged = _mean_over_workers(losses, world, device)
            _report(step + 1, averaged, stamps, network, optimizer, scheduler, states, config, rank, tracker)
            losses, stamps = [], []


def _die_after_committed_checkpoint() -> None:
    """The injected fault: once Ray Train has committed every checkpoint reported so far, this worker process dies
    (no clean-up, like a crash or a lost node)."""
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
    os._exit(1)


def _mean_over_workers(values: list[float], world: int, device: torch.device) -> list[float]:
    """Each step's loss averaged over the workers: one all-reduce per report, not one per step (on the training
    device, which NCCL requires)."""
    if world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return (tensor / world).tolist()


def _gather(state: dict, world: int) -> list[dict]:
    states = [state] * world
    if world > 1:
        torch.distributed.all_gather_object(states, state)
    return states


def _report(
    step: int,
    losses: list[float],
    stamps: list[int],
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    random_states: list[dict],
    config: TrainConfig,
    rank: int,
    tracker: RunLog | None,
) -> None:
    """Report metrics from every rank (Ray requires it) and a checkpoint from rank 0; rank 0 logs each step's loss."""
    metrics = {"step": step, "loss": losses[-1], "lr": scheduler.get_last_lr()[0]}
    if rank != 0:
        ray.train.report(metrics)
        return
    if tracker is not None:
        tracker.log_series("loss", losses, stamps, first_step=step - len(losses) + 1)
        tracker.log_series("lr", [metrics["lr"]], stamps[-1:], first_step=step)
    with tempfile.TemporaryDirectory() as folder:
        save_model(network, Path(folder))
        save_trainer_state(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": step,
                "episodes_seen": step * config.global_batch_size,
                "random_states": random_states,
            },
            Path(folder),
        )
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def system_info() -> dict[str, str]:
    """Where a run ran (logged as tags): software versions and the accelerator, nothing about patients."""
    return {
        "system.python": platform.python_version(),
        "system.platform": platform.platform(),
        "system.torch": torch.__version__,
        "system.ray": ray.__version__,
        "system.mlflow": mlflow_version(),
        "system.cpu_count": str(os.cpu_count()),
        "system.cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def run_training(
    config: TrainConfig,
    *,
    run_name: str,
    ray_storage: str,
    checkpoints_dir: Path,
    experiment: str,
    artifact_root: Path,
    resume: bool = False,
) -> TrainingResult:
    """Launch the TorchTrainer, track it in MLflow and keep the final checkpoint under `checkpoints_dir`.

    With `resume`, the run named `run_name` continues from its last checkpoint with its recorded configuration
    (Ray Train restores from the same name and storage path); without it, a taken name is refused."""
    experiment_id = use_experiment(config.tracking_uri, experiment, artifact_root)
    previous = find_run(config.tracking_uri, experiment_id, run_name)
    if resume and previous is None:
        raise RunNameError(f"no training run named {run_name!r} in experiment {experiment!r} to resume")
    if not resume and previous is not None:
        raise RunNameError(f"a training run named {run_name!r} exists: resume it or choose another name")
    if previous is not None:
        recorded = load_run_dict(previous, CONFIG_ARTIFACT)
        config = TrainConfig(**{**recorded, "tracking_uri": config.tracking_uri, "run_id": previous.run_id})
    store = TaskStore.open(config.store_url, config.resolution)
    training_tasks, held_out_tasks = split_tasks(store.tasks(), config.held_out, store.resolution)
    if not training_tasks:
        raise ValueError(f"no training tasks in {config.store_url} outside the held-out spec {config.held_out}")
    stacks = eligible_stacks(store, config.held_out) if config.self_supervised_share else []
    if config.self_supervised_share and not stacks:
        raise ValueError(f"self-supervised tasks asked for, but no training volume in {config.store_url} may be cut")
    run_id = previous.run_id if previous else None
    with open_run(config.tracking_uri, experiment_id, run_name, run_id) as run, following() as progress_queue:
        config.run_id = run.run_id
        if previous is None:
            run.log_params({k: v for k, v in asdict(config).items() if k not in {"run_id", "tracking_uri"}})
            run.log_params({"global_batch_size": config.global_batch_size, "scaled_lr": config.scaled_lr})
            run.log_dict({k: v for k, v in asdict(config).items() if k != "run_id"}, CONFIG_ARTIFACT)
            run.set_tags(
                {
                    "git_commit": git_commit(),
                    "store_snapshot_id": store.snapshot_id(),
                    "fingerprint_hash": fingerprint_hash(
                        {name: store.version_info(name)["fingerprint"] for name in store.datasets()}
                    ),
                    "held_out": ",".join(config.held_out),
                    "excluded": ",".join(config.excluded),
                    "training_datasets": json.dumps(dataset_licences(store, training_tasks, stacks)),
                    "splits": Splits.from_dict(config.splits).to_tag(),
                    **preparation_tags(store, training_tasks),
                    "training_tasks": len(training_tasks),
                    "held_out_tasks": len(held_out_tasks),
                    **system_info(),
                }
            )
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={**asdict(config), QUEUE_KEY: progress_queue},
            scaling_config=ScalingConfig(
                num_workers=config.num_workers,
                use_gpu=config.use_gpu,
                resources_per_worker={"CPU": 1},
                placement_strategy=config.placement_strategy,
            ),
            run_config=RunConfig(
                name=run_name,
                storage_path=ray_storage,
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                failure_config=FailureConfig(max_failures=config.max_failures),
            ),
        )
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as error:
            raise TrainingFailedError(
                f"training run {run_name!r} failed after {config.max_failures} restarts; "
                f"continue it with resume (its last checkpoint is kept): {error}"
            ) from error
        final = checkpoints_dir / run_name
        if final.exists():
            shutil.rmtree(final)
        result.checkpoint.to_directory(str(final))
        run.log_artifacts(final, artifact_path="checkpoint")
        final_loss = float(result.metrics["loss"])
        run.log_metrics({"final_loss": final_loss})
    return TrainingResult(run_id=config.run_id, run_name=run_name, checkpoint_dir=final, final_loss=final_loss)
