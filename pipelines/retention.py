"""The retention policy the nightly pipeline applies last: what old state the workspace stops keeping.

- Checkpoints: the final-checkpoint folders (`<workspace>/checkpoints/`) and Ray Train run folders (local Ray
  storage) beyond the newest `keep_checkpoints` of each. Registered versions keep their own copy in MLflow.
- Store versions: `TaskStore.prune` (superseded dataset versions beyond `keep_store_versions`, and case arrays
  only they listed).
- Versions never promoted: registered versions that never were `champion`, hold no alias now and are not among
  the newest `keep_unpromoted` such versions are deleted from the registry with their logged model's artifacts.
- Prefect results: persisted task results older than `prefect_results_days`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

from mlflow import MlflowClient
from pydantic import BaseModel

from pipelines.settings import Settings
from promptseg.registry.versions import CHAMPION, alias_history
from storage.task_store import TaskStore


class RetentionLimits(BaseModel):
    keep_checkpoints: int = 3
    keep_store_versions: int = 2
    keep_unpromoted: int = 3
    prefect_results_days: float = 14.0


def _prune_folders(parent: Path, keep: int) -> int:
    if not parent.is_dir():
        return 0
    folders = sorted((p for p in parent.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in folders[keep:]:
        shutil.rmtree(folder, ignore_errors=True)
    return len(folders[keep:])


def _delete_unpromoted(settings: Settings, keep: int) -> list[str]:
    client = MlflowClient(settings.registry.tracking_uri)
    name = settings.registry.model_name
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        return []
    aliased = {str(version) for version in client.get_registered_model(name).aliases.values()}
    ever_champion = {str(move["to_version"]) for move in alias_history(settings.registry.tracking_uri, name, CHAMPION)}
    versions = sorted({str(v.version) for v in client.search_model_versions(f"name = '{name}'")}, key=int)
    candidates = [version for version in versions if version not in aliased | ever_champion]
    deleted = []
    for version in candidates[: max(len(candidates) - keep, 0)]:
        model_id = client.get_model_version(name, version).model_id
        client.delete_model_version(name, version)
        if model_id:
            location = urlparse(client.get_logged_model(model_id).artifact_location)
            client.delete_logged_model(model_id)
            if location.scheme in ("", "file"):
                shutil.rmtree(location.path, ignore_errors=True)
        deleted.append(version)
    return deleted


def _prune_prefect_results(settings: Settings, days: float) -> int:
    folder = settings.prefect_home / "storage"
    if not folder.is_dir():
        return 0
    cutoff = time.time() - days * 86400
    old = [path for path in folder.rglob("*") if path.is_file() and path.stat().st_mtime < cutoff]
    for path in old:
        path.unlink(missing_ok=True)
    return len(old)


def apply_retention(settings: Settings, limits: RetentionLimits) -> dict:
    """Apply every rule; returns what each removed."""
    ray_storage = Path(settings.training.ray_storage)
    store = TaskStore.open(settings.store, settings.resolution)
    return {
        "checkpoint_folders": _prune_folders(settings.root / "checkpoints", limits.keep_checkpoints),
        "ray_run_folders": _prune_folders(ray_storage, limits.keep_checkpoints)
        if "://" not in settings.training.ray_storage
        else 0,
        "store": store.prune(limits.keep_store_versions),
        "deleted_versions": _delete_unpromoted(settings, limits.keep_unpromoted),
        "prefect_results": _prune_prefect_results(settings, limits.prefect_results_days),
    }
