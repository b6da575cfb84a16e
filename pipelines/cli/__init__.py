"""The `promptseg` command line (typer): `app` with one command per platform stage; see pipelines.cli.app."""

from pipelines.cli.app import app

__all__ = ["app"]
