"""What every command shares: the global options, the settings they give (built when a command runs, so `--help`
creates nothing) and the output: results as JSON on stdout; notes, progress lines and errors on stderr, one line
each.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import typer
from pydantic import ValidationError
from pydantic_core import to_jsonable_python
from rich.console import Console
from rich.text import Text

from pipelines import environment
from pipelines.settings import Settings

PROGRESS_LOGGER = "promptseg.progress"  # per-case lines of the flows, training progress, volume queries
stdout = Console()
stderr = Console(stderr=True)


class SettingsError(ValueError):
    """The PROMPTSEG_* variables (or global options) do not make valid settings."""


@dataclass(frozen=True)
class GlobalOptions:
    """The options given before the command; each overrides its PROMPTSEG_* variable."""

    workspace: Path | None = None
    resolution: int | None = None

    def overrides(self) -> dict[str, object]:
        return {name: value for name, value in vars(self).items() if value is not None}


def settings(ctx: typer.Context) -> Settings:
    """The settings in force, built once per invocation: the workspace is created, the environment prepared for the
    flows (pipelines.environment) and progress lines shown."""
    if "settings" not in ctx.meta:  # meta is shared by every context of one invocation
        options: GlobalOptions = ctx.obj or GlobalOptions()
        try:
            built = Settings(**options.overrides())
        except ValidationError as error:
            raise SettingsError(f"invalid settings (PROMPTSEG_* variables): {validation_message(error)}") from error
        environment.prepare(built)
        _show_progress()
        ctx.meta["settings"] = built
    return ctx.meta["settings"]


def validation_message(error: ValidationError) -> str:
    """A pydantic error as one line: each field and what is wrong with it."""
    problems = []
    for detail in error.errors():
        field = ".".join(str(part) for part in detail["loc"]) or error.title
        problems.append(f"{field}: {detail['msg'].removeprefix('Value error, ').removeprefix(f'{field}: ')}")
    return "; ".join(problems)


def show(payload: object) -> None:
    """Print a result as JSON: typed hand-offs (pydantic models, dataclasses) as their fields, paths as text."""
    stdout.print_json(json.dumps(to_jsonable_python(payload, fallback=str)))


def note(line: str, style: str = "dim") -> None:
    """One line on stderr, never wrapped and never read as markup."""
    stderr.print(Text(" ".join(line.split()), style=style), soft_wrap=True, highlight=False)


class _NoteHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        note(self.format(record))


def _show_progress() -> None:
    logger = logging.getLogger(PROGRESS_LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not any(isinstance(handler, _NoteHandler) for handler in logger.handlers):
        logger.addHandler(_NoteHandler())
