"""Typed errors of the data stage; each names the file and the problem, so a bad case is reported and skipped."""

from __future__ import annotations

from pathlib import Path


class StorageError(Exception):
    """Base class of every error raised by the data stage."""


class RawDataError(StorageError):
    """A raw file or dataset description is missing, unreadable or inconsistent."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class StoreSchemaError(StorageError):
    """The task store has another schema version or resolution than the caller expects."""
