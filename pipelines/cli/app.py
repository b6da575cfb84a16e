"""The `promptseg` root command: the global options, `--version`, and every command in its place.

Global options (each overrides its PROMPTSEG_* variable) reach every command, `nightly` and `schedule` included:
the settings are built from them when a command runs (pipelines.cli.context) and exported to what reads the
environment (pipelines.environment). Exit codes and how errors print: pipelines.cli.errors.
A new command is a function in the module of its stage, registered below.
"""

from __future__ import annotations

from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli import data, models, pipeline, propagation, serving
from pipelines.cli.context import GlobalOptions
from pipelines.cli.errors import CommandGroup

app = typer.Typer(
    cls=CommandGroup,
    help="PromptSeg platform: in-context medical image segmentation.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"promptseg {package_version('promptseg-platform')}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    workspace: Annotated[Path | None, typer.Option(help="Workspace folder (PROMPTSEG_WORKSPACE).")] = None,
    resolution: Annotated[int | None, typer.Option(help="Store/model resolution (PROMPTSEG_RESOLUTION).")] = None,
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")
    ] = False,
) -> None:
    ctx.obj = GlobalOptions(workspace=workspace, resolution=resolution)


for command in (data.synth, data.verify, data.ingest, data.preprocess):
    app.command()(command)
for command in (models.train, models.evaluate, models.register, models.promote):
    app.command()(command)
app.add_typer(models.champion, name="champion")
app.add_typer(serving.serve, name="serve")
for command in (serving.query, serving.segment, propagation.propagate, propagation.predict):
    app.command()(command)
for command in (pipeline.nightly, pipeline.schedule, pipeline.demo):
    app.command()(command)
