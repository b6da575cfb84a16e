"""The data commands: `synth`, `verify`, `ingest` and `preprocess`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines import stages
from pipelines.cli.context import note, settings, show
from storage.ingest_record import Failure


def synth(out: Path, cases: int = 6, seed: int = 0) -> None:
    """Write the multi-center simulator's datasets (NIfTI/MSD, NRRD, DICOM) under OUT."""
    from storage.synthetic import write_synthetic_datasets

    show([str(p) for p in write_synthetic_datasets(out, cases, seed)])


def verify(sources: list[Path]) -> None:
    """Check raw datasets (MSD folders or manifest .yaml files) before ingest; print every problem with its file
    (exit code 1 if any)."""
    report = stages.verify(sources)
    show(report)
    if any(report.values()):
        raise typer.Exit(1)


def _summarize(failures: list[Failure], summary: str) -> None:
    """One line per failure naming its file (reports name cases by pseudonym only; the file is for the person here)
    and the summary."""
    for failure in failures:
        where = f"{failure.dataset} {failure.file}" if failure.case is not None else failure.file
        note(f"{where}: {failure.problem}", style="yellow")
    note(summary, style="red")


def ingest(
    ctx: typer.Context,
    sources: list[Path],
    strict: Annotated[bool, typer.Option(help="Ingest nothing if any case or source is rejected.")] = False,
) -> None:
    """Check raw datasets (MSD folders or manifest .yaml files) and write ingest records of their good cases; exit
    code 1 with a summary when cases were rejected."""
    report = stages.ingest(settings(ctx), sources, strict)
    show(report)
    if report.failures:
        rejected = sum(row.rejected for row in report.datasets)
        unreadable = sum(1 for failure in report.failures if failure.case is None)
        landed = sum(row.cases for row in report.datasets)
        outcome = "nothing was ingested (--strict)" if strict else f"{landed} good case(s) ingested"
        _summarize(report.failures, f"{rejected} case(s) and {unreadable} source(s) rejected; {outcome}")
        raise typer.Exit(1)


def preprocess(
    ctx: typer.Context,
    dataset: Annotated[list[str] | None, typer.Option(help="Only this ingested dataset; repeatable.")] = None,
) -> None:
    """Harmonize ingested datasets into the Zarr task store (cached per case); exit code 1 when cases failed."""
    report = stages.preprocess(settings(ctx), dataset)
    show(report)
    if report.failures:
        _summarize(report.failures, f"{len(report.failures)} case(s) could not be written and were left out")
        raise typer.Exit(1)
