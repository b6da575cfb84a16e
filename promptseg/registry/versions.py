"""Contract 3, the model registry (MLflow), kept in this one module.

- Registered model `promptseg` (name configurable). A version's artifacts: `model.safetensors` (weights),
  `model_config.json` (architecture, size, resolution, N_max) and `model_card.json`, logged as an MLflow pyfunc
  from code (promptseg/registry/pyfunc_model.py) whose loader rebuilds the network through the model factory.
- Version tags: the run's lineage (git commit, store snapshot id, fingerprint hash, held-out spec) and, after
  evaluation, the held-out scores with what they were measured on (`RecordedEvaluation`).
- Aliases: `challenger` (just trained) and `champion` (served). Every alias move is recorded as its own tag on
  the registered model (`<alias>_move_<n>`: when, who, from and to which version, why, and the scores the decision
  rested on), so the history can be listed and a rollback is one command; versions are never rewritten.
"""

from __future__ import annotations

import getpass
import json
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict
from torch import nn

from promptseg.nets.checkpoint import CONFIG, WEIGHTS

# The pyfunc's predict() is deliberately unannotated (a dict of arrays has no MLflow type-hint schema); MLflow warns
# about that on every load. Set here, at import, because MLflow resets warning filters while it runs the model file.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method", category=UserWarning)

CHALLENGER = "challenger"
CHAMPION = "champion"
PYFUNC_SOURCE = Path(__file__).with_name("pyfunc_model.py")
LINEAGE_TAGS = (
    "git_commit",
    "store_snapshot_id",
    "fingerprint_hash",
    "held_out",
    "splits",
    "excluded",
    "training_datasets",
)


class RegistryError(Exception):
    """A model version or alias that the caller asked for does not exist."""


@dataclass(frozen=True)
class LoadedModel:
    network: nn.Module
    name: str
    version: str
    model_card: dict


class RecordedEvaluation(BaseModel):
    """The held-out scores a version is tagged with and what they were measured on: the evaluation spec (as JSON),
    the store snapshot and the primary method (the evaluated network). The evaluation builds it
    (promptseg.evaluation.report.Evaluation.recorded); `tag_evaluation` writes it, `recorded_evaluation` reads it."""

    model_config = ConfigDict(frozen=True)

    scores: dict[str, float]
    spec: dict[str, Any]
    store_snapshot_id: str
    primary: str


def model_card(
    config: dict,
    run_tags: dict,
    validation: RecordedEvaluation | None = None,
    test: RecordedEvaluation | None = None,
) -> dict:
    """Model card with fields after a MONAI bundle's metadata.json. `held_out_scores` are the validation split's
    (what the promotion gate compares), `test_scores` the test split's (reported, never used for a decision); each
    with the spec it was measured under."""
    r = config["resolution"]
    return {
        "name": {"promptseg": "PromptSeg", "universeg": "UniverSeg-style baseline"}[config["architecture"]],
        "task": "in-context segmentation of one structure given prompt pairs (image + binary mask)",
        "inputs": {
            "prompt_images": {"shape": f"(B, N, 1, {r}, {r})", "value_range": [0, 1], "N": [1, config["n_max"]]},
            "prompt_masks": {"shape": f"(B, N, 1, {r}, {r})", "value_range": [0, 1], "type": "binary"},
            "queries": {"shape": f"(B, Q, 1, {r}, {r})", "value_range": [0, 1]},
            "preprocessing": "storage.preparation (reorient to RAS, normalize, resample, slice, fit to the grid)",
        },
        "outputs": {"logits": {"shape": f"(B, Q, 1, {r}, {r})", "meaning": "foreground logit per pixel"}},
        "resolution": r,
        "architecture": config,
        "training_data": {key: run_tags.get(key) for key in LINEAGE_TAGS},
        "preparation": {
            "recipe_version": run_tags.get("preparation_recipe"),
            "ct_window": json.loads(run_tags.get("ct_window", "null")),
            "target_spacing": json.loads(run_tags.get("target_spacing", "null")),
        },
        "held_out_scores": validation.scores if validation else {},
        "held_out_split": "validation" if validation else None,
        "test_scores": test.scores if test else {},
        "evaluation_specs": {
            split: {"spec": recorded.spec, "store_snapshot_id": recorded.store_snapshot_id}
            for split, recorded in (("validation", validation), ("test", test))
            if recorded
        },
        "intended_use": "research and development; not a medical device; outputs need expert review",
        "license": "Apache-2.0",
    }


def register_checkpoint(
    checkpoint_dir: Path,
    run_id: str,
    tracking_uri: str,
    name: str,
    evaluation: RecordedEvaluation | None = None,
    test_evaluation: RecordedEvaluation | None = None,
) -> str:
    """Log the checkpoint as a pyfunc in `run_id`, register it as a new version with alias challenger; the
    training's validation `evaluation` (scores, spec, store snapshot) goes into the model card and the version's
    tags, its `test_evaluation` into the model card only."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    run_tags = client.get_run(run_id).data.tags
    config = json.loads((checkpoint_dir / CONFIG).read_text())
    with tempfile.TemporaryDirectory() as folder:
        card_path = Path(folder) / "model_card.json"
        card_path.write_text(json.dumps(model_card(config, run_tags, evaluation, test_evaluation), indent=2))
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_SOURCE),
                artifacts={
                    "weights": str(checkpoint_dir / WEIGHTS),
                    "config": str(checkpoint_dir / CONFIG),
                    "model_card": str(card_path),
                },
                registered_model_name=name,
            )
    version = str(info.registered_model_version)
    for key in LINEAGE_TAGS:
        if key in run_tags:
            client.set_model_version_tag(name, version, key, run_tags[key])
    client.set_model_version_tag(name, version, "run_id", run_id)
    if evaluation:
        tag_evaluation(tracking_uri, name, version, evaluation)
    move_alias(tracking_uri, name, CHALLENGER, version, reason="registered after training")
    return version


def resolve_version(tracking_uri: str, name: str, alias_or_version: str) -> str:
    """A version number from an alias (`champion`) or a number; RegistryError if neither exists."""
    client = MlflowClient(tracking_uri)
    try:
        if alias_or_version.isdigit():
            return str(client.get_model_version(name, alias_or_version).version)
        return str(client.get_model_version_by_alias(name, alias_or_version).version)
    except MlflowException as error:
        raise RegistryError(f"model {name!r} has no version or alias {alias_or_version!r}") from error


def alias_version(tracking_uri: str, name: str, alias: str) -> str | None:
    """The version an alias points at, or None if the alias (or the model) does not exist."""
    try:
        return resolve_version(tracking_uri, name, alias)
    except RegistryError:
        return None


def version_splits(tracking_uri: str, name: str, version: str) -> dict[str, list[str]] | None:
    """The validation and test patterns a version was trained without (its `splits` tag), or None if it has none."""
    tag = MlflowClient(tracking_uri).get_model_version(name, version).tags.get("splits")
    return json.loads(tag) if tag else None


def move_alias(
    tracking_uri: str, name: str, alias: str, version: str, *, reason: str, scores: dict[str, float] | None = None
) -> dict:
    """Point `alias` at `version` and record the move (who, when, from, to, why, scores); returns the record."""
    client = MlflowClient(tracking_uri)
    target = resolve_version(tracking_uri, name, version)
    record = {
        "alias": alias,
        "from_version": alias_version(tracking_uri, name, alias),
        "to_version": target,
        "reason": reason,
        "scores": scores or {},
        "user": getpass.getuser(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    client.set_registered_model_alias(name, alias, target)
    moves = len(alias_history(tracking_uri, name, alias))
    client.set_registered_model_tag(name, f"{alias}_move_{moves + 1:05d}", json.dumps(record))
    return record


def alias_history(tracking_uri: str, name: str, alias: str = CHAMPION) -> list[dict]:
    """Every recorded move of `alias`, oldest first."""
    tags = MlflowClient(tracking_uri).get_registered_model(name).tags
    prefix = f"{alias}_move_"
    return [json.loads(tags[key]) for key in sorted(k for k in tags if k.startswith(prefix))]


def load_version(tracking_uri: str, name: str, alias_or_version: str) -> LoadedModel:
    """Load a registered version through its pyfunc loader (which rebuilds the network via the factory)."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    version = resolve_version(tracking_uri, name, alias_or_version)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    python_model = pyfunc.unwrap_python_model()
    return LoadedModel(python_model.network, name, version, python_model.model_card)


def download_checkpoint(tracking_uri: str, name: str, version: str, parent: Path) -> Path:
    """A version's weights and config as a checkpoint folder `<parent>/<name>-v<version>` (kept if present)."""
    folder = Path(parent) / f"{name}-v{version}"
    if (folder / WEIGHTS).exists():
        return folder
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=scratch))
        partial = folder.with_name(folder.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        for file in (WEIGHTS, CONFIG):
            (partial / file).write_bytes(next(local.rglob(file)).read_bytes())
        partial.replace(folder)
    return folder


def tag_evaluation(tracking_uri: str, name: str, version: str, evaluation: RecordedEvaluation) -> None:
    """Tag a version with held-out scores (`heldout_<score>`) and what they were measured on (`heldout_eval_spec`:
    the evaluation spec, the store snapshot and the primary method)."""
    client = MlflowClient(tracking_uri)
    for key, value in evaluation.scores.items():
        client.set_model_version_tag(name, version, f"heldout_{key}", f"{value:.6f}")
    measured_on = evaluation.model_dump(exclude={"scores"})
    client.set_model_version_tag(name, version, "heldout_eval_spec", json.dumps(measured_on))


def recorded_evaluation(tracking_uri: str, name: str, version: str) -> RecordedEvaluation | None:
    """The held-out evaluation tagged on a version, or None if it never was (or was before the primary method was
    recorded beside the scores: such scores are measured again rather than guessed at)."""
    tags = MlflowClient(tracking_uri).get_model_version(name, version).tags
    if "heldout_eval_spec" not in tags:
        return None
    measured_on = json.loads(tags["heldout_eval_spec"])
    if "primary" not in measured_on:
        return None
    scores = {k.removeprefix("heldout_"): float(v) for k, v in tags.items() if k.startswith("heldout_dice_")}
    return RecordedEvaluation(**measured_on, scores=scores)


def version_run_id(tracking_uri: str, name: str, version: str) -> str:
    """The id of the training run a version was logged from."""
    return MlflowClient(tracking_uri).get_model_version(name, version).run_id


def version_training_params(tracking_uri: str, name: str, version: str) -> dict[str, str]:
    """The params of the training run a version was logged from (its TrainConfig, as MLflow holds params: text)."""
    client = MlflowClient(tracking_uri)
    return dict(client.get_run(client.get_model_version(name, version).run_id).data.params)


def tag_version(tracking_uri: str, name: str, version: str, key: str, value: str) -> None:
    MlflowClient(tracking_uri).set_model_version_tag(name, version, key, value)


def delete_unpromoted(tracking_uri: str, name: str, keep: int) -> list[str]:
    """Delete the versions that never were champion and hold no alias, but the newest `keep` of them, with their
    logged model's artifacts; returns the deleted version numbers."""
    client = MlflowClient(tracking_uri)
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        return []
    aliased = {str(version) for version in client.get_registered_model(name).aliases.values()}
    ever_champion = {str(move["to_version"]) for move in alias_history(tracking_uri, name, CHAMPION)}
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
