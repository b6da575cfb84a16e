"""One function per platform stage, shared by the CLI and the demo; each reads and writes what the next reads.

ingest → workspace/raw/<dataset>.json; preprocess → the Zarr task store; train → an MLflow run and a checkpoint
folder (registered as `challenger`); evaluate → a report folder logged to the version's run; promote → the
`champion` alias; serve → a Ray Serve application recorded in workspace/services/serve.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from promptseg.settings import Settings

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

    return ingest_flow([str(s) for s in sources], str(settings.raw_dir), str(settings.secret_path))


def preprocess(settings: Settings, datasets: list[str] | None = None) -> dict:
    from pipelines.flows import dask_runner, preprocess_flow

    runner = dask_runner(settings.dask_address, settings.dask_workers)
    return preprocess_flow.with_options(task_runner=runner)(
        str(settings.raw_dir),
        settings.store,
        settings.resolution,
        datasets,
        settings.axes,
        settings.empty_fraction,
        settings.ct_window,
    )


def train(
    settings: Settings,
    *,
    steps: int,
    size: str = "tiny",
    workers: int = 2,
    batch_size: int = 4,
    seed: int = 0,
    run_name: str | None = None,
    register: bool = True,
    bottleneck: bool = False,
    pretrained_encoder: Path | None = None,
    synthetic_fraction: float = 0.25,
    augment: dict | None = None,
) -> dict:
    from promptseg import cluster
    from promptseg.registry import register_checkpoint
    from promptseg.train import TrainConfig, run_training

    cluster.connect(settings.services_dir, settings.ray_address)
    config = TrainConfig(
        store_url=settings.store,
        resolution=settings.resolution,
        size=size,
        steps=steps,
        num_workers=workers,
        batch_size=batch_size,
        seed=seed,
        held_out=settings.held_out,
        tracking_uri=settings.tracking_uri,
        bottleneck=bottleneck,
        pretrained_encoder=str(pretrained_encoder.resolve()) if pretrained_encoder else "",
        synthetic_fraction=synthetic_fraction,
        augment=augment or {},
    )
    result = run_training(
        config,
        run_name=run_name or time.strftime("train-%Y%m%d-%H%M%S"),
        ray_storage=settings.ray_storage,
        checkpoints_dir=settings.root / "checkpoints",
        experiment=settings.experiment,
        artifact_root=settings.artifact_root,
    )
    outcome = {
        "run_id": result.run_id,
        "run_name": result.run_name,
        "checkpoint": str(result.checkpoint_dir),
        "final_loss": result.metrics["loss"],
    }
    if register:
        outcome["version"] = register_checkpoint(
            result.checkpoint_dir, result.run_id, settings.tracking_uri, settings.model_name
        )
    return outcome


def register(settings: Settings, run_id: str, checkpoint: Path) -> str:
    from promptseg.registry import register_checkpoint

    return register_checkpoint(checkpoint, run_id, settings.tracking_uri, settings.model_name)


def evaluate(
    settings: Settings,
    model: str,
    *,
    resamples: int = 3,
    queries: int = 4,
    baselines: list[Path] | None = None,
    supervised_steps: int = 400,
    ensemble: int = 1,
) -> dict:
    """Evaluate a registered version beside the trivial baselines, the in-context networks whose checkpoint
    folders are given (e.g. a UniverSeg-style run) and, with `supervised_steps`, the supervised UNet."""
    import mlflow

    from promptseg.checkpoint import load_model
    from promptseg.evaluate import EvalSpec, headline_scores
    from promptseg.evaluate import evaluate as run_evaluation
    from promptseg.registry import load_version, tag_scores
    from storage.task_store import TaskStore

    loaded = load_version(settings.tracking_uri, settings.model_name, model)
    out_dir = settings.reports_dir / f"{settings.model_name}-v{loaded.version}"
    store = TaskStore.open(settings.store, loaded.network.config.resolution)
    others = {}
    for folder in baselines or []:
        network = load_model(Path(folder))
        name = network.config.architecture
        taken = name in others or name == loaded.network.config.architecture
        others[Path(folder).name if taken else name] = network
    spec = EvalSpec(
        held_out=settings.held_out,
        resamples=resamples,
        queries=queries,
        supervised_steps=supervised_steps,
        ensemble=ensemble,
    )
    report = run_evaluation(loaded.network, store, spec, out_dir, others)
    scores = headline_scores(report)
    run_id = mlflow.MlflowClient(settings.tracking_uri).get_model_version(settings.model_name, loaded.version).run_id
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"heldout_{k}": v for k, v in scores.items()})
        mlflow.log_artifacts(str(out_dir), artifact_path="evaluation")
    tag_scores(settings.tracking_uri, settings.model_name, loaded.version, scores)
    return {"version": loaded.version, "report_dir": str(out_dir), "scores": scores, "summary": report["summary"]}


def promote(settings: Settings, version: str | None = None) -> str:
    from promptseg.registry import promote as move_alias

    return move_alias(settings.tracking_uri, settings.model_name, version)


def serve(settings: Settings, alias: str = "champion") -> str:
    from promptseg import cluster
    from promptseg.serve_app import deploy

    cluster.connect(settings.services_dir, settings.ray_address)
    url = deploy(settings.tracking_uri, settings.model_name, alias, settings.serve_host, settings.serve_port)
    (settings.services_dir / SERVE_RECORD).write_text(json.dumps({"url": url, "alias": alias}))
    return url


def serve_url(settings: Settings) -> str:
    path = settings.services_dir / SERVE_RECORD
    if not path.exists():
        raise RuntimeError("no endpoint recorded in this workspace: run `promptseg serve` first")
    return json.loads(path.read_text())["url"]


def stop_serving(settings: Settings) -> bool:
    from promptseg import cluster

    record = settings.services_dir / SERVE_RECORD
    if cluster.recorded_head(settings.services_dir) is not None or settings.ray_address:
        from promptseg.serve_app import undeploy

        cluster.connect(settings.services_dir, settings.ray_address, start=False)
        undeploy()
    record.unlink(missing_ok=True)
    return cluster.stop_head(settings.services_dir)
