"""User errors and crashes, told apart in one place (`CommandGroup`, the root command's class).

Exit codes of `promptseg`:
- 0: done.
- 1: the command ran and reports what went wrong in its output (`verify` found problems, `ingest` rejected cases,
  `preprocess` left cases out, a `nightly` step failed, the endpoint failed with a 5xx), or it crashed: an
  unexpected exception prints its traceback (typer's, without local variables) and exits 1.
- 2: a user error, printed as one red line naming the problem and the file (or option, variable or address) at
  fault: the errors below. Typer's own usage errors (an unknown option, a value outside a choice, a missing file
  given to an option that must exist) also exit 2, in typer's box.

The typed errors are looked up by module and name among the modules already imported, so the command line imports
none of Prefect, MLflow, Ray or torch to recognise them.
"""

from __future__ import annotations

import sys
from typing import Any

import click
import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from pipelines.cli.context import note, validation_message

USER_ERRORS = (
    ("storage.errors", "StorageError"),  # raw data and store: RawDataError names the file, StoreSchemaError the store
    ("promptseg.inference.errors", "InvalidInput"),  # an input file the model cannot use
    ("promptseg.serving.client", "APIError"),  # the endpoint refused the request (4xx)
    ("httpx", "TransportError"),  # the endpoint cannot be reached
    ("pipelines.stages", "NoEndpoint"),
    ("pipelines.cli.context", "SettingsError"),
    ("pipelines.promotion", "PromotionError"),
    ("pipelines.nightly", "NightlyAlreadyRunning"),
    ("promptseg.registry.versions", "RegistryError"),  # no such version or alias
    ("promptseg.training.loop", "RunNameError"),
    ("promptseg.nets.pretrained", "PretrainedWeightsError"),
    ("promptseg.serving.app", "InsecureBinding"),
)
REPORTED_FAILURES = (("pipelines.nightly", "NightlyFailed"),)  # recorded in full elsewhere (MLflow); one line here


def _matches(error: BaseException, names: tuple[tuple[str, str], ...]) -> bool:
    for module, name in names:
        kind = getattr(sys.modules.get(module), name, None)
        if kind is not None and isinstance(error, kind):
            return True
    return False


def exit_code(error: BaseException) -> int | None:
    """2 for a user error, 1 for a failure reported in one line, None for a crash."""
    if isinstance(error, ValidationError):  # a request or option the API models refuse
        return 2
    if _matches(error, USER_ERRORS):
        status = getattr(error, "status", None)
        return 1 if isinstance(status, int) and status >= 500 else 2
    if _matches(error, REPORTED_FAILURES):
        return 1
    return None


def describe(error: BaseException) -> str:
    """The one line for a user error or reported failure."""
    if isinstance(error, ValidationError):
        return f"invalid {error.title}: {validation_message(error)}"
    if _matches(error, (("httpx", "TransportError"),)):
        try:
            url = str(error.request.url)
        except RuntimeError:  # no request attached
            url = "the endpoint"
        reason = str(error) or type(error).__name__
        return f"cannot reach {url} ({reason}); is the endpoint running? see `promptseg serve status`"
    return str(error) or type(error).__name__


class CommandGroup(TyperGroup):
    """The root command: every command runs inside its `invoke`, where user errors become one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as error:
            code = exit_code(error)
            if code is None:
                raise
            note(f"error: {describe(error)}", style="red")
            raise typer.Exit(code) from error
