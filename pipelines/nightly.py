"""The `nightly` Prefect flow: what operators run every night, and what `promptseg demo` runs once.

One Prefect task per step, in order: ingest (new or changed cases; a source that cannot be read at all fails the
run) → preprocess (cached: unchanged cases cost nothing) → train a challenger on Ray (the `train` flow: fresh, or
fine-tuned from the champion's weights) → gate it against the champion on the same store snapshot and held-out
spec (pipelines.promotion; scores already measured under that spec and snapshot are reused) → roll out (when
promoted, reload the endpoint, or start one if asked and none runs; if the reload fails the alias goes back, so the
champion that serves stays the champion) → retention (pipelines.retention). Steps whose failures can be passing
(reading sources, the registry, pruning) are retried; training is not (Ray Train restarts failed workers itself).

Each step's outcome is a typed field of the `NightlyReport`, a Prefect Markdown artifact and a tag of the run's MLflow
record (experiment `<experiment>-nightly`, with the whole report as JSON). At most one `nightly` runs at a time: a
Prefect global concurrency limit (`promptseg-nightly`, one slot) is taken before anything else and a second run is
refused with `NightlyAlreadyRunning`. A failing step's own failure hook records the cause (MLflow, a Prefect
artifact and a JSON POST to the configured webhook); the run then stops with `NightlyFailed`, leaving the current
champion serving.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal

import httpx
from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import State, TaskRun
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from pydantic import BaseModel, Field

from pipelines import stages
from pipelines.outcomes import TrainingOutcome
from pipelines.promotion import PromotionDecision, gate, pin
from pipelines.retention import RetentionLimits, RetentionReport, apply_retention
from pipelines.settings import Settings
from pipelines.training_flow import train_flow
from promptseg.registry.tracking import open_run, use_experiment
from storage.ingest_record import load_ingest_records
from storage.reports import IngestReport, PreprocessReport

NIGHTLY_LIMIT = "promptseg-nightly"
STEPS = ("ingest", "preprocess", "train", "gate", "roll_out", "retention")


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
    report_test: bool = Field(True, description="also evaluate the test split, for the model card (never decides)")
    margin: float = 0.0
    endpoint_url: str | None = Field(None, description="the endpoint to roll; default: the workspace's")
    start_endpoint: bool = Field(False, description="start the endpoint when none runs (the demo does)")
    webhook_url: str | None = None
    retention: RetentionLimits = Field(default_factory=RetentionLimits)


class RollOut(BaseModel):
    """What serves after the run: whether the endpoint was rolled to the new champion, its version and address."""

    rolled: bool
    serving: str | None
    url: str | None = None
    why: str | None = None


class NightlyReport(BaseModel):
    """One run: the workspace and resolution it ran on, each step's outcome (None until it completed) and, for a
    failed run, where and why."""

    name: str
    workspace: str
    resolution: int
    status: Literal["running", "succeeded", "failed"] = "running"
    ingest: IngestReport | None = None
    preprocess: PreprocessReport | None = None
    train: TrainingOutcome | None = None
    gate: PromotionDecision | None = None
    roll_out: RollOut | None = None
    retention: RetentionReport | None = None
    failed_step: str | None = None
    cause: str | None = None
    traceback: str | None = None
    mlflow_run_id: str | None = None
    notified: bool = False

    def completed_steps(self) -> list[str]:
        return [step for step in STEPS if getattr(self, step) is not None]


def ensure_concurrency_limit() -> None:
    """Create the pipeline's one-slot global concurrency limit on the Prefect API unless it exists."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(NIGHTLY_LIMIT)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # another run may create it between the two calls
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=NIGHTLY_LIMIT, limit=1))


@contextmanager
def single_run() -> Iterator[None]:
    """Hold the nightly slot for the run, or refuse at once when another run holds it."""
    ensure_concurrency_limit()
    try:
        with concurrency(NIGHTLY_LIMIT, occupy=1, timeout_seconds=2, strict=True):
            yield
    except TimeoutError as error:
        raise NightlyAlreadyRunning("another nightly run is in progress; this one was refused") from error


@task(name="ingest", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def ingest_step(settings: Settings, sources: list[str]) -> IngestReport:
    """Ingest the given sources, or again every source ingested so far; a source that cannot be read at all fails."""
    if not sources:
        sources = sorted({record.source for record in load_ingest_records(settings.data.raw_dir)})
    report = stages.ingest(settings, [Path(s) for s in sources])
    unreadable = [failure for failure in report.failures if failure.case is None]  # a whole source, not a case
    if unreadable:
        raise RuntimeError(f"{len(unreadable)} source(s) could not be read: {[f.model_dump() for f in unreadable]}")
    return report


@task(name="preprocess", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def preprocess_step(settings: Settings) -> PreprocessReport:
    return stages.preprocess(settings)


@task(name="train", cache_policy=NO_CACHE)
def train_step(settings: Settings, config: NightlyConfig) -> TrainingOutcome:
    """The `train` flow, fresh or from the champion's weights; evaluated and registered as the challenger."""
    options = {"steps": config.steps, "num_workers": config.num_workers, **config.train_options}
    if config.fine_tune:
        options["init_weights"] = str(stages.champion_checkpoint(settings))
    run_name = time.strftime("nightly-%Y%m%d-%H%M%S")
    return train_flow(run_name=run_name, report_test=config.report_test, options=options)


@task(name="gate", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def gate_step(settings: Settings, margin: float) -> PromotionDecision:
    return gate(settings, margin)


@task(name="roll_out", cache_policy=NO_CACHE)
def roll_out_step(settings: Settings, config: NightlyConfig, decision: PromotionDecision) -> RollOut:
    """Make the endpoint serve the champion the gate left: reload it after a promotion, or start it if asked."""
    url = config.endpoint_url or stages.recorded_serve_url(settings)
    if url is None and config.start_endpoint:
        return RollOut(rolled=True, serving=decision.champion, url=stages.serve(settings))
    if not decision.promoted:
        return RollOut(rolled=False, serving=decision.champion, url=url, why="the champion stays")
    if url is None:
        return RollOut(rolled=False, serving=None, why="no endpoint is running")
    try:
        with stages.endpoint_client(settings, url) as client:
            reload = client.reload()
    except Exception:
        if decision.champion_before is not None:  # the old champion still serves: make the registry say so
            pin(settings, decision.champion_before, reason="nightly: the endpoint could not load the challenger")
        raise
    return RollOut(rolled=True, serving=reload.model_version, url=url)


@task(name="retention", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def retention_step(settings: Settings, limits: RetentionLimits) -> RetentionReport:
    return apply_retention(settings, limits)


def _markdown(step: str, outcome: BaseModel) -> str:
    lines = [f"# nightly: {step}", ""]
    if isinstance(outcome, PromotionDecision) and outcome.challenger_dice is not None:
        lines += [
            "| version | held-out Dice |",
            "|---|---|",
            f"| challenger v{outcome.challenger} | {outcome.challenger_dice:.4f} |",
            f"| champion v{outcome.champion_before} | {outcome.champion_dice:.4f} |",
            "",
            f"**{'promoted' if outcome.promoted else 'kept the champion'}**: {outcome.reason}",
        ]
    else:
        lines += ["```json", outcome.model_dump_json(indent=2)[:20000], "```"]
    return "\n".join(lines)


def _record(settings: Settings, report: NightlyReport) -> str:
    """The run's MLflow record: one tag per step outcome, the gate's scores as metrics, the report as JSON."""
    registry = settings.registry
    experiment_id = use_experiment(registry.tracking_uri, f"{registry.experiment}-nightly", registry.artifact_root)
    with open_run(registry.tracking_uri, experiment_id, report.name) as run:
        run.set_tags({"status": report.status, "failed_step": report.failed_step or ""})
        run.set_tags(
            {f"step_{step}": getattr(report, step).model_dump_json()[:4900] for step in report.completed_steps()}
        )
        if report.gate is not None and report.gate.challenger_dice is not None:
            run.log_metrics(
                {"challenger_dice": report.gate.challenger_dice, "champion_dice": report.gate.champion_dice}
            )
        run.log_dict(report.model_dump(mode="json"), "nightly_report.json")
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


def _on_failure(settings: Settings, config: NightlyConfig, report: NightlyReport, step: str) -> Callable:
    """The failure hook of a step's task: record the failed run, notify the webhook, leave an artifact."""

    def hook(_: Task, __: TaskRun, state: State) -> None:
        error = state.result(raise_on_failure=False)
        if isinstance(error, BaseException):
            report.cause = f"{type(error).__name__}: {error}"
            report.traceback = "".join(traceback.format_exception(error))[-4000:]
        else:
            report.cause = state.message
        report.status, report.failed_step = "failed", step
        report.mlflow_run_id = _record(settings, report)
        payload = report.model_dump(include={"name", "status", "failed_step", "cause", "mlflow_run_id"})
        report.notified = notify(config.webhook_url, payload)
        create_markdown_artifact(f"# nightly failed at {step}\n\n{report.cause}", key="nightly-failure")

    return hook


def run_pipeline(settings: Settings, config: NightlyConfig) -> NightlyReport:
    """The steps in order, each a Prefect task with its failure hook; returns the report of every step."""
    report = NightlyReport(
        name=time.strftime("nightly-%Y%m%d-%H%M%S"), workspace=str(settings.root), resolution=settings.resolution
    )

    def run(step: str, step_task: Task, *arguments: Any) -> Any:
        get_run_logger().info("nightly step %s", step)
        hooked = step_task.with_options(on_failure=[_on_failure(settings, config, report, step)])
        try:
            outcome = hooked(*arguments)
        except Exception as error:
            raise NightlyFailed(step, error) from error
        setattr(report, step, outcome)
        create_markdown_artifact(_markdown(step, outcome), key=f"nightly-{step.replace('_', '-')}", description=step)
        return outcome

    run("ingest", ingest_step, settings, config.sources)
    run("preprocess", preprocess_step, settings)
    run("train", train_step, settings, config)
    decision = run("gate", gate_step, settings, config.margin)
    run("roll_out", roll_out_step, settings, config, decision)
    run("retention", retention_step, settings, config.retention)
    report.status = "succeeded"
    report.mlflow_run_id = _record(settings, report)
    return report


@flow(name="nightly")
def nightly(config: NightlyConfig | None = None) -> NightlyReport:
    """Run the nightly pipeline with the workspace settings (read from the environment, as a deployment's run does)."""
    with single_run():
        return run_pipeline(Settings(), config or NightlyConfig())
