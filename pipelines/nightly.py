"""The `nightly` Prefect flow: what operators run every night.

ingest (new or changed cases; a source that cannot be read at all fails the run) → preprocess (cached: unchanged
cases cost nothing) → train a challenger on Ray (fresh, or fine-tuned from the champion's weights) → gate it
against the champion on the same store snapshot and held-out spec (pipelines.promotion; scores already measured
under that spec and snapshot are reused) → when promoted, roll the Serve application to the new champion (a reload
through the endpoint; if that fails the alias goes back, so the champion that serves stays the champion) →
retention (pipelines.retention).

Each step's outcome becomes a Prefect Markdown artifact and a tag of the run's MLflow record (experiment
`<experiment>-nightly`, with the whole report as JSON). At most one `nightly` runs at a time: a Prefect global
concurrency limit (`promptseg-nightly`, one slot) is taken before anything else and a second run is refused with
`NightlyAlreadyRunning`. A failing step stops the run, is reported with its cause (MLflow, the flow's state and a
JSON POST to the configured webhook) and leaves the current champion serving.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from pydantic import BaseModel, Field

from pipelines import stages
from pipelines.promotion import gate, pin
from pipelines.retention import RetentionLimits, apply_retention
from pipelines.settings import Settings
from promptseg.registry.tracking import open_run, use_experiment

NIGHTLY_LIMIT = "promptseg-nightly"


class NightlyAlreadyRunning(RuntimeError):
    """Another `nightly` run holds the pipeline's concurrency slot."""


class NightlyFailed(RuntimeError):
    """A step of the nightly pipeline failed; the champion was left serving."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"nightly step {step!r} failed: {type(cause).__name__}: {cause}")
        self.step, self.cause = step, cause


class NightlyConfig(BaseModel):
    """What one nightly run does; the deployment's parameters."""

    sources: list[str] = Field(default_factory=list, description="raw datasets; empty: those already ingested")
    steps: int = 300
    num_workers: int = 2
    fine_tune: bool = False
    train_options: dict[str, Any] = Field(default_factory=dict, description="more TrainConfig fields")
    margin: float = 0.0
    endpoint_url: str | None = Field(None, description="the endpoint to roll; default: the workspace's")
    webhook_url: str | None = None
    retention: RetentionLimits = Field(default_factory=RetentionLimits)


def ensure_concurrency_limit() -> None:
    """Create the pipeline's one-slot global concurrency limit on the Prefect API unless it exists."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(NIGHTLY_LIMIT)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # another run may create it between the two calls
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=NIGHTLY_LIMIT, limit=1))


@contextmanager
def single_run():
    """Hold the nightly slot for the run, or refuse at once when another run holds it."""
    ensure_concurrency_limit()
    try:
        with concurrency(NIGHTLY_LIMIT, occupy=1, timeout_seconds=2, strict=True):
            yield
    except TimeoutError as error:
        raise NightlyAlreadyRunning("another nightly run is in progress; this one was refused") from error


def _sources(settings: Settings, config: NightlyConfig) -> list[str]:
    if config.sources:
        return config.sources
    return sorted({json.loads(path.read_text())["source"] for path in settings.data.raw_dir.glob("*.json")})


def _ingest(settings: Settings, config: NightlyConfig, _: dict) -> dict:
    report = stages.ingest(settings, [Path(s) for s in _sources(settings, config)])
    unreadable = [f for f in report["failures"] if "case" not in f]  # a whole source, not one of its cases
    if unreadable:
        raise RuntimeError(f"{len(unreadable)} source(s) could not be read: {unreadable}")
    return report


def _preprocess(settings: Settings, _: NightlyConfig, __: dict) -> dict:
    return stages.preprocess(settings)


def _train(settings: Settings, config: NightlyConfig, _: dict) -> dict:
    options = {"steps": config.steps, "num_workers": config.num_workers, **config.train_options}
    if config.fine_tune:
        options["init_weights"] = str(stages.champion_checkpoint(settings))
    outcome = stages.train(settings, run_name=time.strftime("nightly-%Y%m%d-%H%M%S"), **options)
    return {key: outcome[key] for key in ("run_id", "run_name", "final_loss", "version")} | {
        "scores": outcome["evaluation"]["scores"]
    }


def _gate(settings: Settings, config: NightlyConfig, _: dict) -> dict:
    return gate(settings, config.margin)


def _roll_out(settings: Settings, config: NightlyConfig, report: dict) -> dict:
    decision = report["steps"]["gate"]
    if not decision["promoted"]:
        return {"rolled": False, "serving": decision["champion"], "why": "the champion stays"}
    url = config.endpoint_url or stages.recorded_serve_url(settings)
    if url is None:
        return {"rolled": False, "serving": None, "why": "no endpoint is running"}
    try:
        with stages.endpoint_client(settings, url) as client:
            reload = client.reload()
    except Exception:
        if decision["champion_before"] is not None:  # the old champion still serves: make the registry say so
            pin(settings, decision["champion_before"], reason="nightly: the endpoint could not load the challenger")
        raise
    return {"rolled": True, "serving": reload.model_version, "url": url}


def _retention(settings: Settings, config: NightlyConfig, _: dict) -> dict:
    return apply_retention(settings, config.retention)


STEPS: list[tuple[str, Callable[[Settings, NightlyConfig, dict], dict]]] = [
    ("ingest", _ingest),
    ("preprocess", _preprocess),
    ("train", _train),
    ("gate", _gate),
    ("roll_out", _roll_out),
    ("retention", _retention),
]


def _markdown(step: str, outcome: dict) -> str:
    lines = [f"# nightly: {step}", ""]
    if step == "gate":
        lines += [
            "| version | held-out Dice |",
            "|---|---|",
            f"| challenger v{outcome['challenger']} | {outcome.get('challenger_dice', float('nan')):.4f} |",
            f"| champion v{outcome['champion_before']} | {outcome.get('champion_dice', float('nan')):.4f} |",
            "",
            f"**{'promoted' if outcome['promoted'] else 'kept the champion'}**: {outcome['reason']}",
        ]
    else:
        lines += ["```json", json.dumps(outcome, indent=2, default=str)[:20000], "```"]
    return "\n".join(lines)


def _record(settings: Settings, report: dict) -> str:
    """The run's MLflow record: one tag per step outcome, the gate's scores as metrics, the report as JSON."""
    experiment_id = use_experiment(
        settings.registry.tracking_uri, f"{settings.registry.experiment}-nightly", settings.registry.artifact_root
    )
    with open_run(settings.registry.tracking_uri, experiment_id, report["name"]) as run:
        run.set_tags({"status": report["status"], "failed_step": report.get("failed_step", "")})
        for step, outcome in report["steps"].items():
            run.set_tags({f"step_{step}": json.dumps(outcome, default=str)[:4900]})
        gate_outcome = report["steps"].get("gate", {})
        metrics = {k: gate_outcome[k] for k in ("challenger_dice", "champion_dice") if k in gate_outcome}
        if metrics:
            run.log_metrics(metrics)
        run.log_dict(report, "nightly_report.json")
    return run.run_id


def notify(url: str | None, payload: dict) -> bool:
    """POST the failure to the webhook; a webhook that is down is logged, never raised."""
    if not url:
        return False
    try:
        httpx.post(url, json=payload, timeout=10).raise_for_status()
    except httpx.HTTPError as error:
        get_run_logger().warning("webhook %s was not notified: %s", url, error)
        return False
    return True


@flow(name="nightly")
def nightly(config: NightlyConfig | None = None) -> dict:
    """Run the nightly pipeline with the workspace settings; returns the report of every step."""
    config = config or NightlyConfig()
    settings = Settings()
    logger = get_run_logger()
    with single_run():
        report: dict = {"name": time.strftime("nightly-%Y%m%d-%H%M%S"), "steps": {}, "status": "running"}
        for step, action in STEPS:
            logger.info("nightly step %s", step)
            try:
                outcome = action(settings, config, report)
            except Exception as error:
                report |= {"status": "failed", "failed_step": step, "cause": f"{type(error).__name__}: {error}"}
                report["traceback"] = traceback.format_exc()[-4000:]
                report["mlflow_run_id"] = _record(settings, report)
                report["notified"] = notify(
                    config.webhook_url,
                    {key: report[key] for key in ("name", "status", "failed_step", "cause", "mlflow_run_id")},
                )
                create_markdown_artifact(
                    f"# nightly failed at {step}\n\n{report['cause']}", key="nightly-failure", description=step
                )
                raise NightlyFailed(step, error) from error
            report["steps"][step] = outcome
            create_markdown_artifact(
                _markdown(step, outcome), key=f"nightly-{step.replace('_', '-')}", description=step
            )
        report["status"] = "succeeded"
        report["mlflow_run_id"] = _record(settings, report)
        return report
