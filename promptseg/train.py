"""Training PromptSeg with Ray Train: a TorchTrainer whose workers (DDP; gloo on CPU, NCCL on GPU) each draw
their own episodes from the task store, report metrics and checkpoints through `ray.train.report`, and log to
MLflow from rank 0 only. The driver opens the MLflow run, records lineage (store snapshot, fingerprints, git
commit, held-out spec) and keeps the final checkpoint.
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, prepare_model

from promptseg.checkpoint import load_model, load_trainer_state, save_model, save_trainer_state
from promptseg.factory import build_model, load_pretrained_encoder, model_config
from promptseg.losses import segmentation_loss
from promptseg.synthetic_tasks import synthetic_batch
from promptseg.task_augment import TaskAugmentConfig, augment_batch
from promptseg.tracking import git_commit, use_experiment
from storage.fingerprint import fingerprint_hash
from storage.sampler import EpisodeSampler, split_tasks
from storage.task_store import TaskStore


@dataclass
class TrainConfig:
    """Everything a training run depends on; logged to MLflow as params."""

    store_url: str
    resolution: int
    size: str = "tiny"
    n_max: int = 64
    bottleneck: bool = False
    kl_weight: float = 0.01
    pretrained_encoder: str = ""
    augment: dict = field(default_factory=dict)
    synthetic_fraction: float = 0.25
    max_prompts: int = 8
    batch_size: int = 4
    steps: int = 300
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    held_out: list[str] = field(default_factory=lambda: ["kidney*"])
    report_every: int = 25
    num_workers: int = 2
    use_gpu: bool = False
    threads_per_worker: int = 1
    tracking_uri: str = ""
    run_id: str = ""


@dataclass(frozen=True)
class TrainingResult:
    run_id: str
    run_name: str
    checkpoint_dir: Path
    metrics: dict


def _learning_rate_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _training_batch(
    sampler: EpisodeSampler, generator: torch.Generator, config: TrainConfig, device: torch.device
) -> dict[str, torch.Tensor]:
    """A batch of store episodes, or (with probability `synthetic_fraction`) of synthetic tasks, with the task
    augmentation applied on `device`; all randomness from the sampler's state and `generator`, both saved in
    checkpoints."""
    if torch.rand(1, generator=generator).item() < config.synthetic_fraction:
        n_prompts = int(torch.randint(1, config.max_prompts + 1, (1,), generator=generator))
        batch = synthetic_batch(config.batch_size, n_prompts, 1, config.resolution, generator)
    else:
        arrays = sampler.sample_batch(config.batch_size, config.max_prompts)
        batch = {key: torch.from_numpy(value) for key, value in arrays.items()}
    batch = {key: value.to(device).float() for key, value in batch.items()}
    return augment_batch(batch, TaskAugmentConfig(**config.augment), generator)


def train_loop_per_worker(raw_config: dict) -> None:
    """The loop every Ray Train worker runs."""
    config = TrainConfig(**raw_config)
    torch.set_num_threads(config.threads_per_worker)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    store = TaskStore.open(config.store_url, config.resolution)
    training_tasks, _ = split_tasks(store.tasks(), config.held_out, store.resolution)
    sampler = EpisodeSampler(store, training_tasks, seed=config.seed * 1000 + rank)
    torch.manual_seed(config.seed)
    network = build_model(model_config(config.size, config.resolution, config.n_max, config.bottleneck))
    if config.pretrained_encoder:
        load_pretrained_encoder(network, Path(config.pretrained_encoder))
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank + 1)
    model = prepare_model(network)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr * world, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _learning_rate_factor(step, config))
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            network.load_state_dict(load_model(Path(folder)).state_dict())
            state = load_trainer_state(Path(folder))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
        sampler.set_state(state["samplers"][rank])
        torch.set_rng_state(state["torch_rng"])
        generator.set_state(state["augment_rngs"][rank])
        random.setstate(state["python_rng"])
    tracker = mlflow.MlflowClient(config.tracking_uri) if rank == 0 and config.run_id else None
    losses: list[float] = []
    model.train()
    for step in range(start, config.steps):
        batch = _training_batch(sampler, generator, config, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits, kl = model(batch["prompt_images"], batch["prompt_masks"], batch["queries"], return_kl=True)
        loss = segmentation_loss(logits.float(), batch["query_masks"]) + config.kl_weight * kl.float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if (step + 1) % config.report_every == 0 or step + 1 == config.steps:
            randomness = (sampler.state(), generator.get_state())
            _report(step + 1, losses, network, optimizer, scheduler, randomness, config, rank, world, tracker)
            losses = []


def _report(
    step: int,
    losses: list[float],
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    randomness: tuple[dict, torch.Tensor],
    config: TrainConfig,
    rank: int,
    world: int,
    tracker: mlflow.MlflowClient | None,
) -> None:
    mean_loss = torch.tensor(float(np.mean(losses)))
    if world > 1:
        torch.distributed.all_reduce(mean_loss)
        mean_loss /= world
    worker_states = [randomness] * world  # (sampler state, augmentation generator state) per rank
    if world > 1:
        torch.distributed.all_gather_object(worker_states, randomness)
    metrics = {"step": step, "loss": float(mean_loss), "lr": scheduler.get_last_lr()[0]}
    if rank != 0:
        ray.train.report(metrics)
        return
    if tracker is not None:
        for key in ("loss", "lr"):
            tracker.log_metric(config.run_id, key, metrics[key], step=step)
    with tempfile.TemporaryDirectory() as folder:
        save_model(network, Path(folder))
        save_trainer_state(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": step,
                "samplers": [sampler_state for sampler_state, _ in worker_states],
                "augment_rngs": [generator_state for _, generator_state in worker_states],
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
            },
            Path(folder),
        )
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def run_training(
    config: TrainConfig,
    *,
    run_name: str,
    ray_storage: Path,
    checkpoints_dir: Path,
    experiment: str,
    artifact_root: Path,
) -> TrainingResult:
    """Launch the TorchTrainer, track it in MLflow and keep the final checkpoint under `checkpoints_dir`."""
    store = TaskStore.open(config.store_url, config.resolution)
    training_tasks, held_out_tasks = split_tasks(store.tasks(), config.held_out, store.resolution)
    if not training_tasks:
        raise ValueError(f"no training tasks in {config.store_url} outside the held-out spec {config.held_out}")
    experiment_id = use_experiment(config.tracking_uri, experiment, artifact_root)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        config.run_id = run.info.run_id
        mlflow.log_params({k: v for k, v in asdict(config).items() if k not in {"run_id", "tracking_uri"}})
        mlflow.set_tags(
            {
                "git_commit": git_commit(),
                "store_snapshot_id": store.snapshot_id(),
                "fingerprint_hash": fingerprint_hash(
                    {name: store.version_info(name)["fingerprint"] for name in store.datasets()}
                ),
                "held_out": ",".join(config.held_out),
                "training_tasks": len(training_tasks),
                "held_out_tasks": len(held_out_tasks),
            }
        )
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=asdict(config),
            scaling_config=ScalingConfig(
                num_workers=config.num_workers, use_gpu=config.use_gpu, resources_per_worker={"CPU": 1}
            ),
            run_config=RunConfig(
                name=run_name,
                storage_path=str(ray_storage),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                failure_config=FailureConfig(max_failures=2),
            ),
        )
        result = trainer.fit()
        final = checkpoints_dir / run_name
        if final.exists():
            shutil.rmtree(final)
        result.checkpoint.to_directory(str(final))
        mlflow.log_artifacts(str(final), artifact_path="checkpoint")
        mlflow.log_metrics({"final_loss": result.metrics["loss"]})
    return TrainingResult(config.run_id, run_name, final, dict(result.metrics))
