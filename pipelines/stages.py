"""One function per platform stage, shared by the CLI and the demo; each reads and writes what the next reads.

ingest → workspace/raw/<dataset>.json; preprocess → the Zarr task store; train → an MLflow run and a checkpoint
folder (registered as `challenger`); evaluate → a report folder logged to the version's run; promote → the
`champion` alias; serve → a Ray Serve application recorded in workspace/services/serve.json.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.settings import Settings

if TYPE_CHECKING:
    from promptseg.serving.client import PromptSegClient

SERVE_RECORD = "serve.json"


def verify(sources: list[Path]) -> dict[str, list[dict]]:
    from storage.verify import verify_dataset

    report = {}
    for source in sources:
        dataset, problems = verify_dataset(source)
        report[dataset.name] = [problem.to_dict() for problem in problems]
    return report


def ingest(settings: Settings, sources: list[Path]) -> dict:
    from pipelines.flows import ingest_flow

    return ingest_flow([str(s) for s in sources], str(settings.data.raw_dir), str(settings.data.secret_path))


def preprocess(settings: Settings, datasets: list[str] | None = None) -> dict:
    from pipelines.flows import dask_runner, preprocess_flow

    runner = dask_runner(settings.data.dask_address, settings.data.dask_workers)
    return preprocess_flow.with_options(task_runner=runner)(
        str(settings.data.raw_dir),
        settings.store,
        settings.resolution,
        datasets,
        settings.data.axes,
        settings.data.empty_fraction,
        settings.data.ct_window,
    )


def train(
    settings: Settings,
    *,
    run_name: str | None = None,
    resume: bool = False,
    register: bool = True,
    evaluate: bool = True,
    **options: Any,
) -> dict:
    """Train on Ray (options are `promptseg.training.loop.TrainConfig` fields: steps, size, num_workers, …), run
    the `quick` held-out evaluation on the result (logged to the run) and register it as the challenger with those
    scores.
    `resume=True` continues the run named `run_name` from its last checkpoint."""
    from pipelines import cluster
    from promptseg.evaluation.heldout import eval_spec
    from promptseg.nets.checkpoint import load_model
    from promptseg.registry.versions import register_checkpoint
    from promptseg.training.loop import TrainConfig, run_training

    if resume and not run_name:
        raise ValueError("resuming needs the name of the run to continue")
    cluster.connect(settings.services_dir, settings.ray_address)
    config = TrainConfig(
        store_url=settings.store,
        resolution=settings.resolution,
        held_out=settings.training.held_out,
        tracking_uri=settings.registry.tracking_uri,
        **options,
    )
    result = run_training(
        config,
        run_name=run_name or time.strftime("train-%Y%m%d-%H%M%S"),
        ray_storage=settings.training.ray_storage,
        checkpoints_dir=settings.root / "checkpoints",
        experiment=settings.registry.experiment,
        artifact_root=settings.registry.artifact_root,
        resume=resume,
    )
    outcome: dict[str, Any] = {
        "run_id": result.run_id,
        "run_name": result.run_name,
        "checkpoint": str(result.checkpoint_dir),
        "final_loss": result.metrics["loss"],
    }
    if evaluate:
        spec = eval_spec("quick", config.held_out)
        out_dir = settings.reports_dir / result.run_name
        network = load_model(result.checkpoint_dir)
        outcome["evaluation"] = evaluate_network(settings, network, spec, out_dir, result.run_id)
    if register:
        outcome["version"] = register_checkpoint(
            result.checkpoint_dir,
            result.run_id,
            settings.registry.tracking_uri,
            settings.registry.model_name,
            outcome.get("evaluation"),
        )
    return outcome


def register(settings: Settings, run_id: str, checkpoint: Path) -> str:
    from promptseg.registry.versions import register_checkpoint

    return register_checkpoint(checkpoint, run_id, settings.registry.tracking_uri, settings.registry.model_name)


def evaluate_network(
    settings: Settings,
    network: Any,
    spec: Any,
    out_dir: Path,
    run_id: str,
    others: dict | None = None,
) -> dict:
    """Evaluate `network` under `spec` on the current store; log scores and the report folder to MLflow run
    `run_id`. Supervised UNets are kept per store snapshot under workspace/baselines for reuse."""
    from promptseg.evaluation.heldout import evaluate as run_evaluation
    from promptseg.evaluation.heldout import headline_scores
    from promptseg.registry.tracking import RunLog
    from storage.task_store import TaskStore

    store = TaskStore.open(settings.store, network.config.resolution)
    snapshot = store.snapshot_id()
    supervised_cache = settings.root / "baselines" / f"supervised-{snapshot}"
    report = run_evaluation(network, store, spec, out_dir, others, supervised_cache)
    scores = headline_scores(report)
    run = RunLog(settings.registry.tracking_uri, run_id)
    run.log_metrics({f"heldout_{k}": v for k, v in scores.items()})
    run.log_dict({"spec": report["spec"], "store_snapshot_id": snapshot}, f"evaluation-{spec.profile}/spec.json")
    run.log_artifacts(out_dir, artifact_path=f"evaluation-{spec.profile}")
    return {
        "report_dir": str(out_dir),
        "scores": scores,
        "summary": report["summary"],
        "by_center": report["dice_at_largest_n"]["center"],
        "primary": report["primary"],
        "spec": report["spec"],
        "store_snapshot_id": snapshot,
        "supervised_trained": report["supervised_trained"],
    }


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
        shutil.copytree(trained["checkpoint"], partial)
        partial.replace(folder)
    return folder


def evaluate(
    settings: Settings,
    model: str,
    *,
    profile: str = "quick",
    baselines: list[Path] | None = None,
    universeg_steps: int = 2000,
    **overrides: Any,
) -> dict:
    """Evaluate a registered version (alias or number) on the held-out spec recorded on it, under a profile
    (`quick` or `full`; overrides change single spec fields). `full` adds the UniverSeg-style baseline (trained once
    per store snapshot) and the supervised UNet; `baselines` adds checkpoint folders of other in-context networks.
    Scores are logged to the version's run and tagged on the version."""
    from promptseg.evaluation.heldout import eval_spec
    from promptseg.nets.checkpoint import load_model
    from promptseg.registry.versions import load_version, tag_evaluation, version_held_out, version_run_id

    loaded = load_version(settings.registry.tracking_uri, settings.registry.model_name, model)
    held_out = (
        version_held_out(settings.registry.tracking_uri, settings.registry.model_name, loaded.version)
        or settings.training.held_out
    )
    spec = eval_spec(profile, held_out, **overrides)
    folders = list(baselines or [])
    if profile == "full" and loaded.network.config.architecture != "universeg":
        folders.append(universeg_baseline(settings, universeg_steps))
    others = {}
    for folder in folders:
        network = load_model(Path(folder))
        name = network.config.architecture
        taken = name in others or name == loaded.network.config.architecture
        others[Path(folder).name if taken else name] = network
    out_dir = settings.reports_dir / f"{settings.registry.model_name}-v{loaded.version}-{profile}"
    run_id = version_run_id(settings.registry.tracking_uri, settings.registry.model_name, loaded.version)
    result = evaluate_network(settings, loaded.network, spec, out_dir, run_id, others)
    tag_evaluation(settings.registry.tracking_uri, settings.registry.model_name, loaded.version, result)
    return {"version": loaded.version, **result}


def held_out_evaluation(settings: Settings, model: str, profile: str = "quick") -> dict:
    """A version's held-out evaluation under `profile` on the current store: the scores recorded on the version when
    they were measured with the same spec on the same store snapshot (evaluation is deterministic there), else a
    fresh `evaluate`. `reused` says which."""
    from dataclasses import asdict

    from promptseg.evaluation.heldout import eval_spec
    from promptseg.registry.versions import recorded_evaluation, resolve_version, version_held_out
    from storage.task_store import TaskStore

    version = resolve_version(settings.registry.tracking_uri, settings.registry.model_name, model)
    held_out = (
        version_held_out(settings.registry.tracking_uri, settings.registry.model_name, version)
        or settings.training.held_out
    )
    spec = json.loads(json.dumps(asdict(eval_spec(profile, held_out))))
    snapshot = TaskStore.open(settings.store, settings.resolution).snapshot_id()
    recorded = recorded_evaluation(settings.registry.tracking_uri, settings.registry.model_name, version)
    if recorded and "primary" in recorded and (recorded["spec"], recorded["store_snapshot_id"]) == (spec, snapshot):
        return {"version": version, **recorded, "reused": True}
    return {**evaluate(settings, version, profile=profile), "reused": False}


def promote(settings: Settings, *, version: str | None = None, margin: float = 0.0) -> dict:
    """With `version`, pin `champion` to it by hand; otherwise run the promotion gate (pipelines.promotion)."""
    from pipelines.promotion import gate, pin

    return pin(settings, version) if version else gate(settings, margin)


def serve(settings: Settings, alias: str = "champion") -> str:
    """Deploy (or roll over, when it runs already) the Serve application for `models:/<name>@<alias>`."""
    from pipelines import cluster
    from promptseg.serving.app import deploy, options_from

    cluster.connect(settings.services_dir, settings.ray_address)
    url = deploy(settings.registry.tracking_uri, settings.registry.model_name, alias, options_from(settings))
    (settings.services_dir / SERVE_RECORD).write_text(json.dumps({"url": url, "alias": alias}))
    return url


def recorded_serve_url(settings: Settings) -> str | None:
    """The URL of the endpoint this workspace started, or None."""
    path = settings.services_dir / SERVE_RECORD
    return json.loads(path.read_text())["url"] if path.exists() else None


def serve_url(settings: Settings) -> str:
    url = recorded_serve_url(settings)
    if url is None:
        raise RuntimeError("no endpoint recorded in this workspace: run `promptseg serve` first")
    return url


def endpoint_client(settings: Settings, url: str | None = None) -> PromptSegClient:
    """A client of the endpoint (`url`, else the workspace's), sending the configured API key."""
    from promptseg.serving.client import PromptSegClient

    key = settings.serve.api_key.get_secret_value() if settings.serve.api_key else None
    return PromptSegClient(url or serve_url(settings), api_key=key)


def champion_checkpoint(settings: Settings) -> Path:
    """The champion's weights and config as a checkpoint folder (to fine-tune from), fetched from the registry."""
    from promptseg.registry.versions import CHAMPION, download_checkpoint, resolve_version

    version = resolve_version(settings.registry.tracking_uri, settings.registry.model_name, CHAMPION)
    return download_checkpoint(
        settings.registry.tracking_uri, settings.registry.model_name, version, settings.root / "checkpoints"
    )


def stop_serving(settings: Settings) -> bool:
    from pipelines import cluster

    record = settings.services_dir / SERVE_RECORD
    if cluster.recorded_head(settings.services_dir) is not None or settings.ray_address:
        from promptseg.serving.app import undeploy

        cluster.connect(settings.services_dir, settings.ray_address, start=False)
        undeploy()
    record.unlink(missing_ok=True)
    return cluster.stop_head(settings.services_dir)
