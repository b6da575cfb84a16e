"""MLflow runs as training, evaluation and the pipelines see them: the experiment, a run to log to, lineage.

`RunLog` is the one handle other packages log through (params, tags, metrics, per-step series, dicts and
artifact folders); `open_run` opens (or continues) a run around a block; `find_run` looks a run up by name.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

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


def mlflow_version() -> str:
    return mlflow.__version__


class RunLog:
    """What may be logged to one MLflow run, from any process that knows the tracking URI and the run id."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self._client = MlflowClient(tracking_uri)

    def log_params(self, params: dict[str, Any]) -> None:
        self._client.log_batch(self.run_id, params=[Param(key, str(value)) for key, value in params.items()])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        stamp = int(time.time() * 1000)
        entries = [Metric(key, float(value), stamp, step or 0) for key, value in metrics.items()]
        self._client.log_batch(self.run_id, metrics=entries)

    def log_series(self, name: str, values: Sequence[float], stamps_ms: Sequence[int], first_step: int) -> None:
        """One value per step (`first_step`, `first_step + 1`, …) with the time each step ended, in one batch."""
        metrics = [Metric(name, v, t, first_step + i) for i, (v, t) in enumerate(zip(values, stamps_ms, strict=True))]
        self._client.log_batch(self.run_id, metrics=metrics)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        self._client.log_dict(self.run_id, data, artifact_file)

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        self._client.log_artifacts(self.run_id, str(folder), artifact_path=artifact_path)


@dataclass(frozen=True)
class RunRef:
    run_id: str
    artifact_uri: str


def find_run(tracking_uri: str, experiment_id: str, run_name: str) -> RunRef | None:
    """The run named `run_name` in the experiment, or None."""
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(
        [experiment_id], filter_string=f"attributes.run_name = '{run_name}'", output_format="list", max_results=1
    )
    return RunRef(runs[0].info.run_id, runs[0].info.artifact_uri) if runs else None


def load_run_dict(run: RunRef, artifact_file: str) -> dict:
    return mlflow.artifacts.load_dict(f"{run.artifact_uri}/{artifact_file}")


@contextmanager
def open_run(
    tracking_uri: str, experiment_id: str | None = None, run_name: str | None = None, run_id: str | None = None
) -> Iterator[RunLog]:
    """A new run in the experiment (or the existing `run_id`, continued) for the block; it ends FINISHED, or FAILED
    when the block raises."""
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=run_name) as run:
        yield RunLog(tracking_uri, run.info.run_id)
