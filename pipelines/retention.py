"""The retention policy the nightly pipeline applies last: what old state the workspace stops keeping.

- Checkpoints: the final-checkpoint folders (`<workspace>/checkpoints/`) and Ray Train run folders (local Ray
  storage) beyond the newest `keep_checkpoints` of each. Registered versions keep their own copy in MLflow.
- Store versions: `TaskStore.prune` (superseded dataset versions beyond `keep_store_versions`, and case arrays
  only they listed).
- Versions never promoted: registered versions that never were `champion`, hold no alias now and are not among
  the newest `keep_unpromoted` such versions are deleted from the registry with their logged model's artifacts.
- Prefect results: persisted task results older than `prefect_results_days`.
- The endpoint's data (`purge_serving`, also `promptseg serve purge`): registered tasks (their prompts are patient
  pixels) not registered or segmented against for `PROMPTSEG_SERVE_TASK_RETENTION_DAYS`, finished jobs and their
  results past `PROMPTSEG_SERVE_JOB_RETENTION_S`, and audit logs older than `PROMPTSEG_SERVE_AUDIT_RETENTION_DAYS`.
`apply_retention` returns a `RetentionReport` of what each rule removed.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from pipelines.settings import Settings
from promptseg.registry.versions import delete_unpromoted
from promptseg.serving.job_store import JobStore
from promptseg.serving.served_tasks import ServedTasks
from promptseg.serving.settings import ServeSettings
from storage.task_store import TaskStore


class RetentionLimits(BaseModel):
    keep_checkpoints: int = 3
    keep_store_versions: int = 2
    keep_unpromoted: int = 3
    prefect_results_days: float = 14.0


class ServingPurge(BaseModel):
    """What the endpoint's retention removed: tasks, finished jobs (with their results) and audit log files."""

    model_config = ConfigDict(frozen=True)

    tasks: int
    jobs: int
    audit_logs: int


class RetentionReport(BaseModel):
    """What one application removed: folder counts, the store's pruned versions and cases (`TaskStore.prune`), the
    registry versions deleted and the Prefect result files."""

    model_config = ConfigDict(frozen=True)

    checkpoint_folders: int
    ray_run_folders: int
    store: dict[str, int]
    deleted_versions: list[str]
    prefect_results: int
    serving: ServingPurge


def _prune_folders(parent: Path, keep: int) -> int:
    if not parent.is_dir():
        return 0
    folders = sorted((p for p in parent.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in folders[keep:]:
        shutil.rmtree(folder, ignore_errors=True)
    return len(folders[keep:])


def _delete_older(folder: Path, pattern: str, days: float) -> int:
    """Delete the files under `folder` matching `pattern` last written over `days` ago; returns how many."""
    if not folder.is_dir():
        return 0
    cutoff = time.time() - days * 86400
    old = [path for path in folder.rglob(pattern) if path.is_file() and path.stat().st_mtime < cutoff]
    for path in old:
        path.unlink(missing_ok=True)
    return len(old)


def purge_serving(serve: ServeSettings) -> ServingPurge:
    """Apply the endpoint's retention settings to the folders its replicas share."""
    jobs = JobStore(serve.jobs_dir, serve.job_retention_s, serve.job_stale_s)
    return ServingPurge(
        tasks=ServedTasks(serve.tasks_dir).purge(serve.task_retention_days * 86400),
        jobs=jobs.sweep(now=True),
        audit_logs=_delete_older(serve.audit_dir, "audit-*.jsonl", serve.audit_retention_days),
    )


def apply_retention(settings: Settings, limits: RetentionLimits) -> RetentionReport:
    """Apply every rule; returns what each removed."""
    ray_storage = Path(settings.training.ray_storage)
    store = TaskStore.open(settings.store, settings.resolution)
    return RetentionReport(
        checkpoint_folders=_prune_folders(settings.training.checkpoints_dir, limits.keep_checkpoints),
        ray_run_folders=_prune_folders(ray_storage, limits.keep_checkpoints)
        if "://" not in settings.training.ray_storage
        else 0,
        store=store.prune(limits.keep_store_versions),
        deleted_versions=delete_unpromoted(
            settings.registry.tracking_uri, settings.registry.model_name, limits.keep_unpromoted
        ),
        prefect_results=_delete_older(settings.prefect_home / "storage", "*", limits.prefect_results_days),
        serving=purge_serving(settings.serve),
    )
