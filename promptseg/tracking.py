"""MLflow set-up shared by training, evaluation and registration: the experiment, run lineage tags, git commit."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def use_experiment(tracking_uri: str, name: str, artifact_root: Path) -> str:
    """Point MLflow at `tracking_uri` and return the id of experiment `name` (artifacts under `artifact_root`)."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = artifact_root.as_uri() if tracking_uri.startswith("sqlite:") else None
    return mlflow.create_experiment(name, artifact_location=location)


def git_commit() -> str:
    """The commit of the code that runs, or 'unknown' outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
