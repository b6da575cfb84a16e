"""The model stages: train (Ray Train, the `quick` held-out evaluation, registration as the challenger) and evaluate
(a registered version on its held-out spec), and a version's held-out scores as the promotion gate compares them.

pipelines.stages offers `train` and `evaluate` with the other stages; the promotion gate (pipelines.promotion)
builds on `held_out_evaluation`. Each returns its typed hand-off (pipelines.outcomes).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.settings import Settings

if TYPE_CHECKING:
    from pipelines.outcomes import TrainingOutcome, VersionEvaluation, VersionScores
    from promptseg.evaluation.report import EvalSpec, Evaluation
    from storage.splits import Splits


def train(
    settings: Settings,
    *,
    run_name: str | None = None,
    resume: bool = False,
    register: bool = True,
    evaluate: bool = True,
    **options: Any,
) -> TrainingOutcome:
    """Train on Ray (options are `promptseg.training.loop.TrainConfig` fields: steps, size, num_workers, …), run
    the `quick` held-out evaluation on the result (logged to the run) and register it as the challenger with those
    scores.
    `resume=True` continues the run named `run_name` from its last checkpoint."""
    from pipelines import cluster
    from pipelines.outcomes import TrainingOutcome
    from promptseg.evaluation.report import eval_spec
    from promptseg.nets.checkpoint import load_model
    from promptseg.registry.versions import register_checkpoint
    from promptseg.training.loop import TrainConfig, run_training
    from storage.splits import Splits

    if resume and not run_name:
        raise ValueError("resuming needs the name of the run to continue")
    cluster.connect(settings.services_dir, settings.ray_address)
    config = TrainConfig(
        store_url=settings.store,
        resolution=settings.resolution,
        splits=settings.training.splits.to_dict(),
        tracking_uri=settings.registry.tracking_uri,
        **options,
    )
    result = run_training(
        config,
        run_name=run_name or time.strftime("train-%Y%m%d-%H%M%S"),
        ray_storage=settings.training.ray_storage,
        checkpoints_dir=settings.training.checkpoints_dir,
        experiment=settings.registry.experiment,
        artifact_root=settings.registry.artifact_root,
        resume=resume,
    )
    evaluation = None
    if evaluate:
        spec = eval_spec("quick", Splits.from_dict(config.splits))
        out_dir = settings.reports_dir / result.run_name
        evaluation = evaluate_network(settings, load_model(result.checkpoint_dir), spec, out_dir, result.run_id)
    version = None
    if register:
        version = register_checkpoint(
            result.checkpoint_dir,
            result.run_id,
            settings.registry.tracking_uri,
            settings.registry.model_name,
            evaluation.recorded() if evaluation else None,
        )
    return TrainingOutcome(**result.model_dump(), evaluation=evaluation, version=version)


def evaluate_network(
    settings: Settings,
    network: Any,
    spec: EvalSpec,
    out_dir: Path,
    run_id: str,
    others: dict | None = None,
) -> Evaluation:
    """Evaluate `network` under `spec` on the current store; log scores and the report folder to MLflow run
    `run_id`. Supervised UNets are kept per store snapshot under workspace/baselines for reuse."""
    from promptseg.evaluation.heldout import evaluate as run_evaluation
    from promptseg.registry.tracking import RunLog
    from storage.task_store import TaskStore

    store = TaskStore.open(settings.store, network.config.resolution)
    supervised_cache = settings.root / "baselines" / f"supervised-{store.snapshot_id()}"
    evaluation = run_evaluation(network, store, spec, out_dir, others, supervised_cache)
    run = RunLog(settings.registry.tracking_uri, run_id)
    run.log_metrics({f"{spec.split}_{k}": v for k, v in evaluation.scores.items()})
    folder = f"evaluation-{spec.profile}-{spec.split}"
    run.log_dict({"spec": spec.to_dict(), "store_snapshot_id": evaluation.store_snapshot_id}, f"{folder}/spec.json")
    run.log_artifacts(out_dir, artifact_path=folder)
    return evaluation


def universeg_baseline(settings: Settings, steps: int) -> Path:
    """The UniverSeg-style baseline's checkpoint for the current store snapshot, trained on first use (same held-out
    spec, no registration) and kept under workspace/baselines for every later `full` evaluation."""
    from storage.task_store import TaskStore

    snapshot = TaskStore.open(settings.store, settings.resolution).snapshot_id()
    folder = settings.root / "baselines" / f"universeg-{snapshot}-{steps}steps"
    if not (folder / "model.safetensors").exists():
        trained = train(
            settings,
            steps=steps,
            size="universeg",
            run_name=time.strftime(f"universeg-{snapshot}-%Y%m%d-%H%M%S"),
            register=False,
            evaluate=False,
        )
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(trained.checkpoint_dir, partial)
        partial.replace(folder)
    return folder


def evaluate(
    settings: Settings,
    model: str,
    *,
    profile: str = "quick",
    split: str = "validation",
    baselines: list[Path] | None = None,
    universeg_steps: int = 2000,
    **overrides: Any,
) -> VersionEvaluation:
    """Evaluate a registered version (alias or number) on one split of the splits recorded on it (`validation` or
    `test`), under a profile (`quick` or `full`; overrides change single spec fields). `full` adds the
    UniverSeg-style baseline (trained once per store snapshot) and the supervised UNet; `baselines` adds checkpoint
    folders of other in-context networks. Scores are logged to the version's run; a validation evaluation's are
    also tagged on the version (what the promotion gate reads), a test evaluation's never are."""
    from pipelines.outcomes import VersionEvaluation
    from promptseg.evaluation.report import eval_spec
    from promptseg.nets.checkpoint import load_model
    from promptseg.registry.versions import load_version, tag_evaluation, version_run_id

    loaded = load_version(settings.registry.tracking_uri, settings.registry.model_name, model)
    spec = eval_spec(profile, version_splits(settings, loaded.version), split, **overrides)
    folders = list(baselines or [])
    if profile == "full" and loaded.network.config.architecture != "universeg":
        folders.append(universeg_baseline(settings, universeg_steps))
    others = {}
    for folder in folders:
        network = load_model(Path(folder))
        name = network.config.architecture
        taken = name in others or name == loaded.network.config.architecture
        others[Path(folder).name if taken else name] = network
    out_dir = settings.reports_dir / f"{settings.registry.model_name}-v{loaded.version}-{profile}-{split}"
    run_id = version_run_id(settings.registry.tracking_uri, settings.registry.model_name, loaded.version)
    evaluation = evaluate_network(settings, loaded.network, spec, out_dir, run_id, others)
    if split == "validation":
        tag_evaluation(
            settings.registry.tracking_uri, settings.registry.model_name, loaded.version, evaluation.recorded()
        )
    return VersionEvaluation(version=loaded.version, evaluation=evaluation)


def held_out_evaluation(settings: Settings, model: str, profile: str = "quick") -> VersionScores:
    """A version's held-out evaluation under `profile` on the current store: the one recorded on the version when
    it was measured with the same spec on the same store snapshot (evaluation is deterministic there), else a
    fresh `evaluate`. `reused` says which."""
    from pipelines.outcomes import VersionScores
    from promptseg.evaluation.report import eval_spec
    from promptseg.registry.versions import recorded_evaluation, resolve_version
    from storage.task_store import TaskStore

    version = resolve_version(settings.registry.tracking_uri, settings.registry.model_name, model)
    spec = eval_spec(profile, version_splits(settings, version)).to_dict()
    snapshot = TaskStore.open(settings.store, settings.resolution).snapshot_id()
    recorded = recorded_evaluation(settings.registry.tracking_uri, settings.registry.model_name, version)
    if recorded and (recorded.spec, recorded.store_snapshot_id) == (spec, snapshot):
        return VersionScores(version=version, evaluation=recorded, reused=True)
    fresh = evaluate(settings, version, profile=profile)
    return VersionScores(version=fresh.version, evaluation=fresh.evaluation.recorded(), reused=False)


def version_splits(settings: Settings, version: str) -> Splits:
    """The splits a registered version was trained under (its `splits` tag), else the configured ones."""
    from promptseg.registry.versions import version_splits as recorded_splits
    from storage.splits import Splits

    recorded = recorded_splits(settings.registry.tracking_uri, settings.registry.model_name, version)
    return Splits.from_dict(recorded) if recorded else settings.training.splits
