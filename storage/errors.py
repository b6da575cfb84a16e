"""Typed errors of the data stage; each names the file and the problem, so a bad case is reported and skipped.

`RawDataError` is raised (its `problem` never repeats the path: problems are stored where paths must not go, the
path is in `path`); `Problem` is how a case's error is reported once caught: the case, the file blamed (relative
to the dataset root) and the problem. `unreachable` says why a path that does not exist cannot be read.
"""

from __future__ import annotations

import errno
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from storage.privacy import without_paths


class StorageError(Exception):
    """Base class of every error raised by the data stage."""


class RawDataError(StorageError):
    """A raw file or dataset description is missing, unreadable or inconsistent."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = without_paths(problem, [path])
        super().__init__(f"{path}: {self.problem}")


class StoreSchemaError(StorageError):
    """The task store has another schema version or resolution than the caller expects."""


@dataclass(frozen=True)
class Problem:
    """One problem of one case (`case` None: of the whole source), with the file blamed and the reason."""

    case: str | None
    file: str
    problem: str

    def to_dict(self) -> dict:
        return asdict(self)


def unreachable(path: Path) -> RawDataError:
    """The error for a path that does not exist: a symbolic link loop, a link to nothing, or no file at all."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return RawDataError(path, "a symbolic link loop (the link points back to itself)")
        if os.path.islink(path):
            return RawDataError(path, "file not found (a symbolic link to a missing file)")
    return RawDataError(path, "file not found")
