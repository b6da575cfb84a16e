"""Shared by the benchmarks: a temporary workspace with the multi-center simulator's datasets (and optionally the
embedded CT sample) ingested and preprocessed through the real flows."""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.settings import Settings

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "ct-abdomen-61" / "manifest.yaml"


def prepared_workspace(folder: Path, resolution: int, n_cases: int, with_sample: bool = False) -> Settings:
    """Point the settings at `folder`/ws (process environment, so Ray workers see it too), write and preprocess the
    data, and return the settings."""
    os.environ["PROMPTSEG_WORKSPACE"] = str(Path(folder) / "ws")
    os.environ["PROMPTSEG_RESOLUTION"] = str(resolution)
    from pipelines import environment, stages
    from storage.synthetic import write_synthetic_datasets

    settings = Settings()
    environment.prepare(settings)
    sources = write_synthetic_datasets(Path(folder) / "raw", n_cases=n_cases, seed=0)
    stages.ingest(settings, [*sources, SAMPLE] if with_sample else sources)
    stages.preprocess(settings)
    return settings
