"""One function per platform stage, shared by the CLI and the demo; each reads and writes what the next reads.

ingest → workspace/raw/<dataset>.json (storage.ingest_record); preprocess → the Zarr task store; train → an MLflow
run and a checkpoint folder (registered as `challenger`); evaluate → a report folder logged to the version's run;
promote → the `champion` alias; serve → a Ray Serve application recorded in workspace/services/serve.json.
`train` and `evaluate` live in pipelines.model_stages, which the promotion gate builds on. `addresses` says where
the MLflow UI and the Ray dashboard of the workspace are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from pipelines.model_stages import evaluate, train
from pipelines.settings import Settings

if TYPE_CHECKING:
    from pipelines.promotion import PromotionDecision
    from promptseg.serving.client import PromptSegClient
    from storage.reports import IngestReport, PreprocessReport

__all__ = [
    "NoEndpoint",
    "addresses",
    "champion_checkpoint",
    "endpoint_client",
    "evaluate",
    "ingest",
    "preprocess",
    "promote",
    "recorded_serve_url",
    "register",
    "serve",
    "serve_url",
    "stop_serving",
    "train",
    "verify",
]

SERVE_RECORD = "serve.json"


class NoEndpoint(LookupError):
    """No endpoint address was given and this workspace recorded none."""


def verify(sources: list[Path]) -> dict[str, list[dict]]:
    """Every problem of every source, by dataset name: a source that cannot be read at all (one problem with no
    case, under the source's name) or repeats an earlier source's dataset name does not stop the next ones."""
    from storage.errors import Problem, RawDataError, StorageError
    from storage.verify import verify_dataset

    report: dict[str, list[dict]] = {}
    for source in sources:
        try:
            dataset, problems = verify_dataset(source)
        except StorageError as error:
            problem = error.problem if isinstance(error, RawDataError) else str(error)
            report[Path(source).name] = [Problem(None, str(source), problem).to_dict()]
            continue
        if dataset.name in report:
            clash = f"another source is dataset {dataset.name!r} too; one record per dataset name"
            report[dataset.name].append(Problem(None, str(source), clash).to_dict())
            continue
        report[dataset.name] = [problem.to_dict() for problem in problems]
    return report


def ingest(settings: Settings, sources: list[Path], strict: bool = False) -> IngestReport:
    """Ingest records of the sources' good cases (with `strict`, none if any case or source was rejected)."""
    from pipelines.flows import ingest_flow

    raw_dir, secret = str(settings.data.raw_dir), str(settings.data.secret_path)
    return ingest_flow([SecretStr(str(s)) for s in sources], raw_dir, secret, strict)


def preprocess(settings: Settings, datasets: list[str] | None = None) -> PreprocessReport:
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
        settings.training.held_out,
    )


def register(settings: Settings, run_id: str, checkpoint: Path) -> str:
    from promptseg.registry.versions import register_checkpoint

    return register_checkpoint(checkpoint, run_id, settings.registry.tracking_uri, settings.registry.model_name)


def promote(settings: Settings, *, version: str | None = None, margin: float = 0.0) -> PromotionDecision:
    """With `version`, pin `champion` to it by hand; otherwise run the promotion gate (pipelines.promotion)."""
    from pipelines.promotion import gate, pin

    return pin(settings, version) if version else gate(settings, margin)


def serve(settings: Settings, alias: str = "champion") -> str:
    """Deploy (or roll over, when it runs already) the Serve application for `models:/<name>@<alias>`."""
    from pipelines import cluster
    from promptseg.serving.app import deploy, options_from

    options = options_from(settings.serve)  # the key rule refuses before a Ray head is started
    cluster.connect(settings.services_dir, settings.ray_address)
    url = deploy(settings.registry.tracking_uri, settings.registry.model_name, alias, options)
    (settings.services_dir / SERVE_RECORD).write_text(json.dumps({"url": url, "alias": alias}))
    return url


def recorded_serve_url(settings: Settings) -> str | None:
    """The URL of the endpoint this workspace started, or None."""
    path = settings.services_dir / SERVE_RECORD
    return json.loads(path.read_text())["url"] if path.exists() else None


def serve_url(settings: Settings) -> str:
    url = recorded_serve_url(settings)
    if url is None:
        raise NoEndpoint(
            f"no endpoint is recorded in {settings.root}: start one with `promptseg serve start` or give --url"
        )
    return url


def endpoint_client(settings: Settings, url: str | None = None) -> PromptSegClient:
    """A client of the endpoint (`url`, else the workspace's), sending the configured API key."""
    from promptseg.serving.client import PromptSegClient

    key = settings.serve.api_key.get_secret_value() if settings.serve.api_key else None
    return PromptSegClient(url or serve_url(settings), api_key=key)


def addresses(settings: Settings) -> dict[str, str | None]:
    """Where to look: the MLflow UI (the tracking server, or the command that opens the workspace's database) and
    the dashboard of the Ray head this workspace started (None when it runs none)."""
    from pipelines import cluster

    tracking = settings.registry.tracking_uri
    mlflow_ui = tracking if tracking.startswith("http") else f"mlflow ui --backend-store-uri {tracking}"
    return {"mlflow_ui": mlflow_ui, "ray_dashboard": cluster.dashboard_url(settings.services_dir)}


def champion_checkpoint(settings: Settings) -> Path:
    """The champion's weights and config as a checkpoint folder (to fine-tune from), fetched from the registry."""
    from promptseg.registry.versions import CHAMPION, download_checkpoint, resolve_version

    version = resolve_version(settings.registry.tracking_uri, settings.registry.model_name, CHAMPION)
    return download_checkpoint(
        settings.registry.tracking_uri, settings.registry.model_name, version, settings.training.checkpoints_dir
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
