"""Shared by the benchmarks: a temporary workspace with the multi-center simulator's datasets (and optionally the
embedded real datasets of data/samples) ingested and preprocessed through the real flows, and a random-weight tiny
model registered and promoted as the champion.

Every benchmark workspace keys its case pseudonyms with the committed `bench/pseudonym.key` (it only ever keys the
simulator's and data/samples' public cases), so episodes, which are drawn from pseudonyms, are the same in every
benchmark run and runs of different days can be pooled (bench_splits.py --rows). A user's workspace draws its own
random key (storage.privacy)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import torch

from pipelines import stages
from pipelines.settings import Settings
from promptseg.nets.checkpoint import save_model
from promptseg.nets.factory import build_model, model_config
from promptseg.registry.tracking import use_experiment
from storage.preparation import RECIPE_VERSION

BENCH_KEY = Path(__file__).with_name("pseudonym.key")


def prepared_workspace(folder: Path, resolution: int, n_cases: int, samples: list[Path] | None = None) -> Settings:
    """Point the settings at `folder`/ws (process environment, so Ray workers see it too), write the simulator's
    centers, ingest them with the `samples` manifests (e.g. `sample_manifests()`), preprocess, and return the
    settings."""
    os.environ["PROMPTSEG_WORKSPACE"] = str(Path(folder) / "ws")
    os.environ["PROMPTSEG_RESOLUTION"] = str(resolution)
    from pipelines import environment, stages
    from storage.synthetic import write_synthetic_datasets

    settings = Settings()
    environment.prepare(settings)
    settings.data.secret_path.write_bytes(BENCH_KEY.read_bytes())
    settings.data.secret_path.chmod(0o600)
    sources = write_synthetic_datasets(Path(folder) / "raw", n_cases=n_cases, seed=0)
    stages.ingest(settings, [*sources, *(samples or [])])
    stages.preprocess(settings)
    return settings


def random_champion(settings: Settings, folder: Path, target_spacing: list[float]) -> str:
    """A random-weight tiny PromptSeg at the settings' resolution, checkpointed in `folder`, registered with the
    preparation tags training records (this code's recipe, no CT window, `target_spacing`) and promoted; its
    version."""
    torch.manual_seed(0)
    save_model(build_model(model_config("tiny", settings.resolution)), folder)
    experiment_id = use_experiment(settings.registry.tracking_uri, "bench", settings.registry.artifact_root)
    tags = {
        "preparation_recipe": RECIPE_VERSION,
        "ct_window": json.dumps(None),
        "target_spacing": json.dumps(target_spacing),
    }
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        run_id = run.info.run_id
    version = stages.register(settings, run_id, folder)
    stages.promote(settings, version=version)
    return version
