"""Keyed pseudonyms for cases, and problem texts without source paths: what may leave the workspace's records.

A case id in the store is an HMAC-SHA256 of the dataset name and the source case id under a per-workspace secret
(a random key created once, readable only by its owner). The same source case always maps to the same id within
a workspace, so re-runs stay linkable; without the secret the id reveals nothing about the name. Source paths and
case ids are kept only in the ingest records (owner-only files, storage.ingest_record); what Prefect or MLflow
store names a case by dataset and pseudonym, and a problem's text goes through `without_paths` first (libraries
quote the path they were given in their error messages).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

KEY_BYTES = 32
PATH_PLACEHOLDER = "<file>"


def workspace_secret(path: Path) -> bytes:
    """The workspace's secret key, created (mode 0600) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            return path.read_bytes()
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES))
    return path.read_bytes()


def keyed_case_id(secret: bytes, dataset: str, case: str) -> str:
    """A stable pseudonym for (dataset, case): 'c' + 16 hex characters of an HMAC."""
    return "c" + hmac.new(secret, f"{dataset}\0{case}".encode(), hashlib.sha256).hexdigest()[:16]


def keyed_source_id(secret: bytes, source: Path | str) -> str:
    """A stable pseudonym for a raw dataset source that could not be read (so it has no dataset name to go by):
    's' + 16 hex characters of an HMAC of its absolute path."""
    return "s" + hmac.new(secret, os.path.abspath(source).encode(), hashlib.sha256).hexdigest()[:16]


def without_paths(text: str, paths: Iterable[Path | str]) -> str:
    """`text` with every spelling of each path (absolute, with symbolic links resolved, and as given where that
    holds a folder) replaced by PATH_PLACEHOLDER; the longest first, so that no fragment of a path is left."""
    given = {os.fspath(path) for path in paths} - {""}
    spellings = {path for path in given if os.sep in path.strip(os.sep)}
    spellings |= {os.path.abspath(path) for path in given} | {os.path.realpath(path) for path in given}
    for spelling in sorted(spellings - {os.sep}, key=len, reverse=True):
        text = text.replace(spelling, PATH_PLACEHOLDER)
    return text
