"""The model stages: train (Ray Train, the `quick` evaluation on the validation split and, for the model card, on the
test split, registration as the challenger) and evaluate
(a registered version on its held-out spec), and a version's held-out scores as the promotion gate compares them.

pipelines.stages offers `train` and `evaluate` with the other stages; the promotion gate (pipelines.promotion)
builds on `held_out_evaluation`. Each returns its typed hand-off (pipelines.outcomes).
"""

from __future__ import annotations

import dataclasses
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
    report_test: bool = True,
    **options: Any,
) -> TrainingOutcome:
    """Train on Ray (options are `promptseg.training.loop.TrainConfig` fields: steps, size, num_workers, …), run
    the `quick` evaluation on the validation split (logged to the run, tagged on the version: what the promotion gate
    compares) and, with `report_test` and where the store holds test tasks, on the test split (logged to the run and
    written in the model card, for reporting only), and register the result as the challenger.
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
    evaluation = test_evaluation = None
    if evaluate:
        splits = Splits.from_dict(config.splits)
        network = load_model(result.checkpoint_dir)
        out_dir = settings.reports_dir / result.run_name
        evaluation = evaluate_network(settings, network, eval_spec("quick", splits), out_dir, result.run_id)
        if report_test and _has_tasks(settings, splits, "test"):
            test_dir = settings.reports_dir / f"{result.run_name}-test"
            spec = eval_spec("quick", splits, "test")
            test_evaluation = evaluate_network(settings, network, spec, test_dir, result.run_id)
    version = None
    if register:
        version = register_checkpoint(
            result.checkpoint_dir,
            result.run_id,
            settings.registry.tracking_uri,
            settings.registry.model_name,
            evaluation.recorded() if evaluation else None,
            test_evaluation.recorded() if test_evaluation else None,
        )
    return TrainingOutcome(
        **result.model_dump(), evaluation=evaluation, test_evaluation=test_evaluation, version=version
    )


def _has_tasks(settings: Settings, splits: Splits, split: str) -> bool:
    """Whether the store holds tasks of `split` (a workspace of a hospital's own datasets may hold no test task)."""
    from storage.task_store import TaskStore

    store = TaskStore.open(settings.store, settings.resolution)
    return bool(splits.tasks(store.tasks(), split, store.resolution))


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


BUDGET = ("steps", "batch_size", "num_workers")  # with the store's resolution: what "the same budget" fixes


def universeg_baseline(settings: Settings, budget: dict[str, int]) -> Path:
    """The UniverSeg-style baseline's checkpoint for the current store snapshot and training `budget` (steps, batch
    size per worker, workers), trained on first use by the same loop (same splits, no registration) and kept under
    workspace/baselines for every later `full` evaluation. Its training run is named for the snapshot and budget, so
    an interrupted one is resumed from its last checkpoint by the next evaluation, and a finished one is not run
    again."""
    from promptseg.registry.tracking import find_run, use_experiment
    from storage.task_store import TaskStore

    snapshot = TaskStore.open(settings.store, settings.resolution).snapshot_id()
    name = f"universeg-{snapshot}-" + "x".join(str(budget[key]) for key in BUDGET)
    folder = settings.root / "baselines" / name
    if not (folder / "model.safetensors").exists():
        trained = settings.training.checkpoints_dir / name
        if not (trained / "model.safetensors").exists():
            registry = settings.registry
            experiment = use_experiment(registry.tracking_uri, registry.experiment, registry.artifact_root)
            started = find_run(registry.tracking_uri, experiment, name) is not None
            outcome = train(
                settings, size="universeg", run_name=name, resume=started, register=False, evaluate=False, **budget
            )
            trained = outcome.checkpoint_dir
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(trained, partial)
        partial.replace(folder)
    return folder


def evaluate(
    settings: Settings,
    model: str,
    *,
    profile: str = "quick",
    split: str = "validation",
    baselines: list[Path] | None = None,
    universeg_steps: int | None = None,
    **overrides: Any,
) -> VersionEvaluation:
    """Evaluate a registered version (alias or number) on one split of the splits recorded on it (`validation` or
    `test`), under a profile (`quick` or `full`; overrides change single spec fields). `full` adds the
    UniverSeg-style baseline (trained once per store snapshot at the version's own budget: its steps, batch size and
    workers, unless `universeg_steps` says otherwise) and the supervised UNet; `baselines` adds checkpoint folders of
    other in-context networks. Scores are logged to the version's run; a validation evaluation's are
    also tagged on the version (what the promotion gate reads), a test evaluation's never are."""
    from pipelines.outcomes import VersionEvaluation
    from promptseg.evaluation.report import eval_spec
    from promptseg.nets.checkpoint import load_model
    from promptseg.registry.versions import load_version, tag_evaluation, version_run_id, version_training_params
    from promptseg.training.loop import TrainConfig

    loaded = load_version(settings.registry.tracking_uri, settings.registry.model_name, model)
    spec = eval_spec(profile, version_splits(settings, loaded.version), split, **overrides)
    folders = list(baselines or [])
    if profile == "full" and loaded.network.config.architecture != "universeg":
        params = version_training_params(settings.registry.tracking_uri, settings.registry.model_name, loaded.version)
        if params.get("init_weights") and universeg_steps is None:
            raise ValueError(
                f"version {loaded.version} was fine-tuned from other weights, so its steps are not its whole budget: "
                "give the UniverSeg-style baseline's steps (--universeg-steps)"
            )
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # a run logged without TrainConfig
        budget = {key: int(params.get(key, defaults[key])) for key in BUDGET}
        if universeg_steps is not None:
            budget["steps"] = universeg_steps
        folders.append(universeg_baseline(settings, budget))
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
