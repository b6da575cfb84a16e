"""The whole-pipeline commands: `nightly` (once, now), `schedule` (the Prefect deployment) and `demo`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipelines import environment
from pipelines.cli.context import settings, show, stdout
from pipelines.settings import Settings

if TYPE_CHECKING:
    from pipelines.nightly import NightlyConfig

FineTune = Annotated[bool, typer.Option(help="Start from the champion's weights.")]
Sources = Annotated[list[Path] | None, typer.Option(help="Raw dataset; default: those ingested.")]


def _nightly_config(in_force: Settings, steps: int, fine_tune: bool, source: list[Path] | None) -> NightlyConfig:
    from pipelines.nightly import NightlyConfig

    sources = [str(p.resolve()) for p in source or []]
    webhook = in_force.nightly.webhook_url
    return NightlyConfig(sources=sources, steps=steps, fine_tune=fine_tune, webhook_url=webhook)


def nightly(ctx: typer.Context, steps: int = 300, fine_tune: FineTune = False, source: Sources = None) -> None:
    """Run the nightly pipeline once now: ingest → preprocess → train → gate → roll out → retention (exit code 1,
    with the failed step, when a step fails)."""
    settings_in_force = settings(ctx)  # exported to the flow, which reads its settings from the environment
    from pipelines.nightly import nightly as nightly_flow

    show(nightly_flow(_nightly_config(settings_in_force, steps, fine_tune, source)))


def schedule(ctx: typer.Context, steps: int = 300, fine_tune: FineTune = False, source: Sources = None) -> None:
    """Register the nightly deployment (cron PROMPTSEG_NIGHTLY_CRON in PROMPTSEG_NIGHTLY_TIMEZONE, on this workspace
    and resolution) with the Prefect API at PREFECT_API_URL and its process work pool; start a worker with
    `prefect worker start --pool <pool>`."""
    settings_in_force = settings(ctx)
    from pipelines.schedule import register_nightly

    config = _nightly_config(settings_in_force, steps, fine_tune, source)
    nightly_settings = settings_in_force.nightly
    env = environment.in_force(settings_in_force)
    show(register_nightly(nightly_settings.cron, nightly_settings.timezone, nightly_settings.work_pool, config, env))


def demo(ctx: typer.Context, steps: int = 400) -> None:
    """Run every stage end to end on the embedded defaults and print the held-out result."""
    settings_in_force = settings(ctx)
    from pipelines.demo import run_demo

    run_demo(settings_in_force, steps=steps, console=stdout)
